"""An adaptive end-to-end attack on the composition (12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x),
for the robustness-indicator selector S_ERI, the softmax-response selector S_SR and a learned
selection network S_NET (each kind's torch form: :data:`TORCH_FORMS`).

The records score H with rules (compose.py); this attack tests H itself, as deployed. For each
attacked point x (every point the paper's rule counts as robust-accurate: the sound score counts a
subset, and only counted points can lose) it builds candidate points x' in B_eps(x), one per way
H can fail, and evaluates the deployed H at each:

 0. x itself (H(x) != y when S(x) = 1 and F_robust(x) != y: the rule's blind spot);
 1. core branch: APGD-CE on F_core against y;
 2. core branch, deselecting: PGD from (1) on CE(F_core(x'), y) minus a selector surrogate that
    pushes S(x') to 0 (ERI: F_robust's top-2 logit margin, towards its decision boundary; SR:
    F_robust's log-confidence above log tau; NET: the network's logit minus logit(tau));
 3. robust branch: APGD-CE on F_robust against y (itself a candidate), then PGD from there towards
    the wrong class t it reached (or F_robust's most likely wrong class) maximising
    log f_robust(x')_t, so that F_robust is wrong *and* confident / robust there, i.e. selected;
 4. (a selector with a network of its own, S_NET) robust branch, selecting: PGD from (3) on
    log f_robust(x')_t plus the selector's surrogate, so that S(x') = 1 there too;
 5. each further attack of the evaluate list (APGD-T, FAB-T, Square: ``AttackConfig.attacks``) on
    F_core and on F_robust against y, one candidate per attack and branch.

H at a candidate x' is the deployed composition: S_SR(x') = 1{max_c f_robust(x')_c >= tau} exactly;
S_NET(x') = 1{sigmoid(s(x')) >= tau} exactly;
S_ERI(x') = 1 iff the selector's own attack (the evaluate list, and APGD-conf when the records used
it at eps) finds no change of F_robust(x') in B_eps(x'). The selector's attack runs only where exactly
one branch is wrong at x' (if both are wrong H is wrong whatever S says; if both are right, H is
right). A point is fooled if H(x') != y at any candidate (per-point worst case).

Example::

    >>> cfg = AttackConfig(eps=0.05)
    >>> targets = np.ones(len(y), dtype=bool)
    >>> fooled, h_adv_pred = attack_composition(robust_model, core_model, SelectorSpec("SR", 0.9),
    ...                                         x, y, targets, cfg)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.compose import compose, compose_points
from ..analysis.selectors import Selection, SelectorSpec
from ..attacks import APGD, ATTACKS, eval_mode, pgd
from ..attacks.autoattack import AttackBudget, attack_points
from ..attacks.registry import PAPER_DEFAULT
from ..errors import ParamError
from ..attacks.common import model_device
from ..parallel import by_set, chunks, piece_seed, pmap
from .empirical import EvaluateConfig, attack_list, selector_attack


@dataclass(frozen=True)
class AttackConfig:
    """Budgets: ``steps`` and ``restarts`` for APGD (candidates 1, 3 and the ERI selector's own
    check, as in the evaluate stage), ``push_steps`` for the PGD stages (2, 3, 4); ``selector_conf``
    adds APGD-conf to the ERI selector's check; ``attacks``: the evaluate list, which the ERI
    selector's check runs in full and whose further members (APGD-T, FAB-T, Square, with
    ``member_steps``, ``n_target_classes``, ``square_queries``) add candidate points on both
    branches. :meth:`from_evaluate` takes them from the evaluate section, so the attack on H
    tests what the records measured."""

    eps: float
    norm: str = "linf"
    steps: int = 40
    restarts: int = 1
    push_steps: int = 20
    seed: int = 0
    batch_size: int = 500
    selector_conf: bool = False
    attacks: tuple[str, ...] = PAPER_DEFAULT
    member_steps: int | None = None
    n_target_classes: int | None = None
    square_queries: int | None = None

    def budget(self, seed_offset: int) -> AttackBudget:
        """The attack list's budgets, seeded ``seed + seed_offset``."""
        return AttackBudget(norm=self.norm, steps=self.steps, restarts=self.restarts,
                            member_steps=self.member_steps, n_target_classes=self.n_target_classes,
                            square_queries=self.square_queries, seed=self.seed + seed_offset,
                            batch_size=self.batch_size)

    @classmethod
    def from_evaluate(cls, ev: EvaluateConfig, prefix: str = "evaluate") -> AttackConfig:
        """The evaluate section's threat model and budgets; ``push_steps`` is its
        ``adaptive_push_steps``, and the ERI selector's check runs APGD-conf where the records
        did at eps (``1 in sr_scales``)."""
        if ev.adaptive_push_steps is None:
            raise ParamError(f"{prefix} lacks ['adaptive_push_steps'] (PGD steps of the adaptive attack)")
        return cls(eps=ev.eps, norm=ev.norm, steps=ev.steps, restarts=ev.restarts,
                   push_steps=ev.adaptive_push_steps, seed=ev.seed, batch_size=ev.batch_size,
                   selector_conf=1 in ev.sr_scales, attacks=tuple(ev.attacks), member_steps=ev.member_steps,
                   n_target_classes=ev.n_target_classes, square_queries=ev.square_queries)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) \
        else torch.empty(0)


def eri_select(robust_model: nn.Module, x: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """The deployed S_ERI at the points ``x``: no attack of the selector (the evaluate list at eps,
    each on the points still robust, and APGD-conf where the records ran it at eps) changes
    F_robust in B_eps."""
    pred = _logits(robust_model, x, cfg.batch_size).argmax(1)
    budget = cfg.budget(7)
    cols = attack_list(robust_model, x, pred, cfg.eps, cfg.attacks, budget, scales=(1,))
    ok = torch.ones(len(x), dtype=torch.bool)
    for c, adv in cols.items():
        if c.endswith("_pred_1x"):
            ok &= (adv == pred) | (adv == -1)
    if cfg.selector_conf:
        ok &= selector_attack(robust_model, x, pred, cfg.eps, (1,), budget)["sr_pred_1x"] == pred
    return ok


@dataclass(frozen=True, eq=False)
class DeployedSelector:
    """A deployable selector S in torch form, at points x': ``select`` gives S(x') exactly as
    deployed, ``surrogate`` a differentiable per-sample value that is large where S(x') = 1 (the
    "deselect" candidate lowers it). The form of each kind is its :data:`TORCH_FORMS` entry;
    ``net`` is the selection network of S_NET (unused by the other kinds)."""

    spec: SelectorSpec
    robust_model: nn.Module
    cfg: AttackConfig
    net: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.spec.kind not in TORCH_FORMS:
            raise ParamError(f"selector {self.spec.kind} has no torch form for the adaptive attack; "
                             f"known: {list(TORCH_FORMS)}")
        if TORCH_FORMS[self.spec.kind].own_network and self.net is None:
            raise ParamError(f"{self.spec.name} needs its selection network (selector_net)")

    def select(self, x: torch.Tensor, robust_logits: torch.Tensor) -> torch.Tensor:
        """S(x') at the points ``x`` (``robust_logits``: F_robust's logits there), booleans."""
        return TORCH_FORMS[self.spec.kind].select(self, x, robust_logits)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample value, large where S(x') = 1 (with gradient w.r.t. ``x``)."""
        return TORCH_FORMS[self.spec.kind].surrogate(self, x)


def _eri_form(d: DeployedSelector, x: torch.Tensor, robust_logits: torch.Tensor) -> torch.Tensor:
    return eri_select(d.robust_model, x, d.cfg)


def _sr_form(d: DeployedSelector, x: torch.Tensor, robust_logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(robust_logits, 1).max(1).values >= d.spec.tau


def _net_form(d: DeployedSelector, x: torch.Tensor, robust_logits: torch.Tensor) -> torch.Tensor:
    # in float64, as the records compare net_score (the same float32 sigmoid) with tau
    return torch.sigmoid(_logits(d.net, x, d.cfg.batch_size).reshape(-1)).double() >= d.spec.tau


def _margin_surrogate(d: DeployedSelector, x: torch.Tensor) -> torch.Tensor:
    """S_ERI: F_robust's top-2 logit margin (towards its decision boundary)."""
    top2 = d.robust_model(x).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def _sr_surrogate(d: DeployedSelector, x: torch.Tensor) -> torch.Tensor:
    """S_SR: F_robust's log-confidence above log tau."""
    return F.relu(F.log_softmax(d.robust_model(x), 1).max(1).values - math.log(max(d.spec.tau, 1e-12)))


def _net_surrogate(d: DeployedSelector, x: torch.Tensor) -> torch.Tensor:
    """S_NET: the network's logit minus logit(tau) (> 0 exactly where S_NET(x') = 1)."""
    tau = min(max(d.spec.tau, 1e-6), 1 - 1e-6)
    return d.net(x).reshape(-1) - math.log(tau / (1 - tau))


class TorchForm(NamedTuple):
    """A selector kind in torch form: ``select(d, x, robust_logits)`` (S(x') as deployed),
    ``surrogate(d, x)`` (large where S(x') = 1), ``own_network`` (S is a network of its own, so
    pushing F_robust to a confident wrong class does not select x': the attack adds candidate 4)."""

    select: Callable[..., torch.Tensor]
    surrogate: Callable[..., torch.Tensor]
    own_network: bool = False


#: each deployable selector kind's torch form; a kind of analysis.selectors.SELECTORS that the
#: adaptive attack covers needs one entry here
TORCH_FORMS: dict[str, TorchForm] = {
    "ERI": TorchForm(_eri_form, _margin_surrogate),
    "SR": TorchForm(_sr_form, _sr_surrogate),
    "NET": TorchForm(_net_form, _net_surrogate, own_network=True),
}


def _own_network(spec: SelectorSpec) -> bool:
    return spec.kind in TORCH_FORMS and TORCH_FORMS[spec.kind].own_network


def _deployed(spec: SelectorSpec | DeployedSelector, robust_model: nn.Module, cfg: AttackConfig,
              selector_net: nn.Module | None) -> DeployedSelector:
    if isinstance(spec, DeployedSelector):
        return spec
    return DeployedSelector(spec, robust_model, cfg, selector_net)


def deployed_h(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec | DeployedSelector,
               x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
               selector_net: nn.Module | None = None) -> torch.Tensor:
    """H(x') of (12) as deployed, at the points ``x``: :func:`compose.compose` with the deployed S
    (:class:`DeployedSelector`; ``selector_net``: S_NET's network). The labels ``y`` only decide
    where S must be evaluated: where exactly one of the two models is wrong (elsewhere H is right,
    or wrong, whichever model answers; S is taken as 0 there)."""
    sel = _deployed(spec, robust_model, cfg, selector_net)
    rl, cp = _logits(robust_model, x, cfg.batch_size), _logits(core_model, x, cfg.batch_size).argmax(1)
    rp = rl.argmax(1)
    selected = torch.zeros_like(rp, dtype=torch.bool)
    need = ((rp != y) ^ (cp != y)).nonzero().squeeze(1)
    if len(need):
        selected[need] = sel.select(x[need], rl[need])
    return compose(selected, rp, cp)


def _candidates(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec | DeployedSelector,
                x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
                selector_net: nn.Module | None = None) -> list[torch.Tensor]:
    """The candidate points 0-5 of the module docstring (4 for a selector with its own network, 5
    for a list beyond APGD-CE), each in B_eps(x) and [0, 1]."""
    sel = _deployed(spec, robust_model, cfg, selector_net)
    apgd = lambda m, s: APGD(m, norm=cfg.norm, eps=cfg.eps, steps=cfg.steps, objective="ce",  # noqa: E731
                             seed=cfg.seed + s, batch_size=cfg.batch_size).perturb(x, y)
    push = lambda obj, start: pgd(obj, x, cfg.eps, cfg.push_steps, norm=cfg.norm,  # noqa: E731
                                  start=start)
    c_core = apgd(core_model, 1)
    desel: Callable[[torch.Tensor], torch.Tensor] = lambda xa: (  # noqa: E731
        F.cross_entropy(core_model(xa), y, reduction="none") - sel.surrogate(xa))
    c_desel = push(desel, c_core)
    x1 = apgd(robust_model, 2)
    l1 = _logits(robust_model, x1, cfg.batch_size)
    t = l1.scatter(1, y[:, None], float("-inf")).argmax(1)   # F_robust's most likely wrong class
    wrong_t = lambda xa: F.log_softmax(robust_model(xa), 1).gather(1, t[:, None]).squeeze(1)  # noqa: E731
    c_rob = push(wrong_t, x1)
    out = [x.clone(), c_core, c_desel, x1, c_rob]
    if TORCH_FORMS[sel.spec.kind].own_network:      # 4. select it too: F_robust's push leaves S alone
        out.append(push(lambda xa: wrong_t(xa) + sel.surrogate(xa), c_rob))
    for k, member in enumerate(a for a in cfg.attacks if a != "apgd-ce"):   # 5. the list's other attacks
        for m, s in ((core_model, 11), (robust_model, 12)):
            out.append(attack_points(ATTACKS[member].member, m, x, y, cfg.eps, cfg.budget(s + 2 * k)))
    return out


def attack_composition(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec,
                       x: torch.Tensor, y: torch.Tensor, targets: np.ndarray, cfg: AttackConfig,
                       selector_net: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attack H at the points where ``targets`` is True; return (fooled, h_adv_pred) per point
    (False / -1 elsewhere). ``selector_net``: the selection network of an S_NET ``spec``. Every
    model runs in eval mode; their modes are restored afterwards."""
    fooled, h_adv = np.zeros(len(y), dtype=bool), np.full(len(y), -1, dtype=np.int64)
    idx = torch.as_tensor(np.flatnonzero(targets), dtype=torch.long)
    if len(idx) == 0 or cfg.eps == 0:
        return fooled, h_adv
    xs, ys = x[idx], y[idx]
    worst = torch.full((len(idx),), -1, dtype=torch.long)
    sel = DeployedSelector(spec, robust_model, cfg, selector_net)
    with eval_mode(robust_model), eval_mode(core_model), \
            eval_mode(selector_net) if selector_net is not None else contextlib.nullcontext():
        for cand in _candidates(robust_model, core_model, sel, xs, ys, cfg):
            h = deployed_h(robust_model, core_model, sel, cand, ys, cfg)
            new = (h != ys) & (worst < 0)
            worst[new] = h[new]
    hit = worst >= 0
    fooled[idx[hit].numpy()] = True
    h_adv[idx[hit].numpy()] = worst[hit].numpy()
    return fooled, h_adv


def attack_targets(robust_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection) -> np.ndarray:
    """Points the paper's rule counts as robust-accurate (aligned to ``robust_df``'s order)."""
    pts = compose_points(robust_df, core_df, selection).set_index("index")
    return pts.loc[robust_df["index"].to_numpy(), "rob_acc_paper"].to_numpy(bool)


def adaptive_records(robust_model: nn.Module, core_model: nn.Module, robust_df: pd.DataFrame,
                     core_df: pd.DataFrame, specs: list[SelectorSpec], x: torch.Tensor,
                     y: torch.Tensor, cfg: AttackConfig, selector_net: nn.Module | None = None
                     ) -> pd.DataFrame:
    """Per-point evidence for ``compose.composition``, one block of rows per selector:
    columns index, selector (its name), h_adv_wrong, h_adv_pred (-1 where not fooled).
    ``selector_net``: the selection network of the S_NET specs (their ``robust_df`` holds its
    scores, evaluation/selection_net.py); unused by the other kinds.

    The points are attacked in pieces of ``cfg.batch_size`` (in the records' order), piece ``k`` with
    the seed of piece ``k`` (:func:`~..parallel.piece_seed`), spread over worker processes: the
    records do not depend on the number of workers."""
    targets = {spec.name: attack_targets(robust_df, core_df, spec.selection(robust_df)) for spec in specs}
    pieces = [(spec, k, r) for spec in specs for k, r in enumerate(chunks(len(y), cfg.batch_size))]

    def run(piece: tuple[SelectorSpec, int, range]) -> tuple[np.ndarray, np.ndarray]:
        spec, k, r = piece
        at = slice(r.start, r.stop)
        return attack_composition(robust_model, core_model, spec, x[at], y[at], targets[spec.name][at],
                                  replace(cfg, seed=piece_seed(cfg.seed, k)),
                                  selector_net if _own_network(spec) else None)

    done = by_set([(spec.name, k, r) for spec, k, r in pieces],
                  pmap(run, pieces, desc="attack on H", device=model_device(robust_model)))
    return pd.concat([pd.DataFrame({"index": robust_df["index"].to_numpy(), "selector": spec.name,
                                    "h_adv_wrong": np.concatenate([f for f, _ in done[spec.name]]),
                                    "h_adv_pred": np.concatenate([h for _, h in done[spec.name]])})
                      for spec in specs], ignore_index=True)
