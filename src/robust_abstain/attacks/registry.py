"""The attacks of the evaluate stage, with what each one tests and which record columns it fills.

:func:`robust_abstain.evaluation.empirical.empirical_records` runs every entry of :data:`ATTACKS`,
in order, at eps and / or 2 eps. Adding an evaluation attack: an entry here (its objective in
:mod:`.apgd`), the scales it runs at in the evaluate params, its columns in the records, a test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttackInfo:
    """One evaluation attack: APGD with ``objective``, against the model's own prediction F(x).

    It fills the record columns ``<prefix>_pred_<s>x`` (the prediction at the point it returns in
    B_{s eps}(x)) and ``<prefix>_conf_<s>x`` (the confidence left to F(x) there) for the scales s
    (1: eps, 2: 2 eps) it runs at: those listed by the evaluate params' key ``scales_param``, or
    ``default_scales`` when there is none (or no params). A scale it does not run at holds
    prediction -1 and confidence NaN. With ``survivors_only``, the 2 eps run attacks only the points
    whose prediction survived the eps run; the others keep their eps prediction, confidence NaN."""

    objective: str                   # APGD objective: "ce" or "conf" (17)
    prefix: str                      # record column prefix
    tests: str                       # the decision it tries to change
    scales_param: str | None         # the evaluate key listing its scales (None: not configurable)
    default_scales: tuple[int, ...]  # its scales without that key
    survivors_only: bool
    stop_when_fooled: bool | None    # APGD's option (None: the objective's default)


ATTACKS: dict[str, AttackInfo] = {
    "apgd-ce": AttackInfo(
        objective="ce", prefix="adv", scales_param=None, default_scales=(1, 2), survivors_only=True,
        stop_when_fooled=None,
        tests="F(x) itself: robustness (robust accuracy, S_ERI (10))"),
    # a point whose prediction the attack changed fails SR robust selection at every tau, so fooled
    # points can leave the attack early (its confidence is then f(x')_{F(x)} at that point)
    "apgd-conf": AttackInfo(
        objective="conf", prefix="sr", scales_param="sr_scales", default_scales=(2,),
        survivors_only=False, stop_when_fooled=True,
        tests="the softmax-response selector S_SR (13): raises max_{c != F(x)} f(x')_c (17)"),
}
