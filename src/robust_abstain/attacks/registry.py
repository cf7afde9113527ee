"""The attacks of the evaluate stage, with what each one tests and which record columns it fills.

Two roles (AutoAttack's convention for the first):

* **robustness** attacks form the evaluate params' list ``attacks`` (``attacks_to_run``): at each
  scale (eps, then 2 eps) they run in the list's order, each only on the points whose prediction
  every earlier attack left unchanged; a point is robust only if none changed it (the per-point
  worst case over the list, :func:`robust_abstain.analysis.records.robust`). APGD-CE is ours
  (:mod:`.apgd`); APGD-T, FAB-T and Square are pyautoattack's (:mod:`.autoattack`).
* the **selector** attack APGD-conf (17) tests softmax response at the scales ``sr_scales`` on every
  point (it needs the lowest confidence, not just a change of prediction).

Adding an evaluation attack: an entry here (its code in :mod:`.apgd` or :mod:`.autoattack`), a test
in tests/test_attacks.py; its record columns follow from its ``prefix``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class AttackInfo:
    """One evaluation attack against the model's own prediction F(x).

    It fills the record columns ``<prefix>_pred_<s>x`` (the prediction at the point it returns in
    B_{s eps}(x)) and ``<prefix>_conf_<s>x`` (the confidence left to F(x) there) for the scales s
    (1: eps, 2: 2 eps) it runs at; a point it did not attack holds prediction -1 and confidence NaN
    (APGD-CE, which every list starts with, instead repeats at 2 eps its eps verdict of a point it
    broke at eps). ``objective``: ours, APGD with that objective; ``member``: the
    pyautoattack member (:data:`.autoattack.MEMBERS`)."""

    prefix: str                      # record column prefix
    tests: str                       # the decision it tries to change
    role: Literal["robustness", "selector"]
    objective: str | None = None     # our APGD's objective: "ce" or "conf" (17)
    member: str | None = None        # pyautoattack's member
    stop_when_fooled: bool | None = None  # our APGD's option (None: the objective's default)


ATTACKS: dict[str, AttackInfo] = {
    "apgd-ce": AttackInfo(prefix="adv", role="robustness", objective="ce",
                          tests="F(x) itself: robustness (robust accuracy, S_ERI (10))"),
    "apgd-t": AttackInfo(prefix="apgdt", role="robustness", member="apgd-t",
                         tests="F(x), towards each of the most likely other classes (targeted DLR)"),
    "fab-t": AttackInfo(prefix="fabt", role="robustness", member="fab-t",
                        tests="F(x), by the nearest boundary point towards each likely class (targeted FAB)"),
    "square": AttackInfo(prefix="square", role="robustness", member="square",
                         tests="F(x), without gradients (Square: random search on the margin)"),
    # a point whose prediction the attack changed fails SR robust selection at every tau, so fooled
    # points can leave the attack early (its confidence is then f(x')_{F(x)} at that point)
    "apgd-conf": AttackInfo(prefix="sr", role="selector", objective="conf", stop_when_fooled=True,
                            tests="the softmax-response selector S_SR (13): raises max_{c != F(x)} f(x')_c (17)"),
}
#: the robustness attacks, in the order AutoAttack's standard version runs them
ROBUSTNESS = tuple(k for k, a in ATTACKS.items() if a.role == "robustness")
#: the evaluate list of the paper's own evaluation (40-step APGD-CE)
PAPER_DEFAULT = ("apgd-ce",)
