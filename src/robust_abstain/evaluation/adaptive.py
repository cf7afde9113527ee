"""An adaptive end-to-end attack on the composition (12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x),
for the robustness-indicator selector S_ERI and the softmax-response selector S_SR.

The records score H with rules (compose.py); this attack tests H itself, as deployed. For each
attacked point x (every point the paper's rule counts as robust-accurate: the sound score counts a
subset, and only counted points can lose) it builds candidate points x' in B_eps(x), one per way
H can fail, and evaluates the deployed H at each:

 0. x itself (H(x) != y when S(x) = 1 and F_robust(x) != y: the rule's blind spot);
 1. core branch: APGD-CE on F_core against y;
 2. core branch, deselecting: PGD from (1) on CE(F_core(x'), y) minus a selector surrogate that
    pushes S(x') to 0 (ERI: F_robust's top-2 logit margin, towards its decision boundary; SR:
    F_robust's log-confidence above log tau);
 3. robust branch: APGD-CE on F_robust against y (itself a candidate), then PGD from there towards
    the wrong class t it reached (or F_robust's most likely wrong class) maximising
    log f_robust(x')_t, so that F_robust is wrong *and* confident / robust there, i.e. selected.

H at a candidate x' is the deployed composition: S_SR(x') = 1{max_c f_robust(x')_c >= tau} exactly;
S_ERI(x') = 1 iff the selector's own attack (APGD-CE, and APGD-conf when the records used it at
eps) finds no change of F_robust(x') in B_eps(x'). The selector's attack runs only where exactly
one branch is wrong at x' (if both are wrong H is wrong whatever S says; if both are right, H is
right). A point is fooled if H(x') != y at any candidate (per-point worst case).

Example::

    >>> cfg = AttackConfig(eps=0.05)
    >>> targets = np.ones(len(y), dtype=bool)
    >>> fooled, h_adv_pred = attack_composition(robust_model, core_model, SelectorSpec("SR", 0.9),
    ...                                         x, y, targets, cfg)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.compose import compose, compose_points
from ..analysis.selectors import Selection, SelectorSpec
from ..attacks import APGD, eval_mode, pgd, worst_case_predictions
from ..errors import ParamError
from .empirical import EvaluateConfig


@dataclass(frozen=True)
class AttackConfig:
    """Budgets: ``steps`` and ``restarts`` for APGD (candidates 1, 3 and the ERI selector's own
    check, as in the evaluate stage), ``push_steps`` for the PGD stages (2, 3); ``selector_conf``
    adds APGD-conf to the ERI selector's check. :meth:`from_evaluate` takes them from the
    evaluate section, so the attack on H tests what the records measured."""

    eps: float
    norm: str = "linf"
    steps: int = 40
    restarts: int = 1
    push_steps: int = 20
    seed: int = 0
    batch_size: int = 500
    selector_conf: bool = False

    @classmethod
    def from_evaluate(cls, ev: EvaluateConfig, prefix: str = "evaluate") -> AttackConfig:
        """The evaluate section's threat model and budgets; ``push_steps`` is its
        ``adaptive_push_steps``, and the ERI selector's check runs APGD-conf where the records
        did at eps (``1 in sr_scales``)."""
        if ev.adaptive_push_steps is None:
            raise ParamError(f"{prefix} lacks ['adaptive_push_steps'] (PGD steps of the adaptive attack)")
        return cls(eps=ev.eps, norm=ev.norm, steps=ev.steps, restarts=ev.restarts,
                   push_steps=ev.adaptive_push_steps, seed=ev.seed, batch_size=ev.batch_size,
                   selector_conf=1 in ev.sr_scales)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) \
        else torch.empty(0)


def eri_select(robust_model: nn.Module, x: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """The deployed S_ERI at the points ``x``: no attack of the selector changes F_robust in B_eps."""
    pred = _logits(robust_model, x, cfg.batch_size).argmax(1)
    ok = torch.ones(len(x), dtype=torch.bool)
    for objective in ("ce", "conf") if cfg.selector_conf else ("ce",):
        adv, _ = worst_case_predictions(robust_model, x, pred, cfg.eps, norm=cfg.norm, steps=cfg.steps,
                                        restarts=cfg.restarts, objective=objective,
                                        seed=cfg.seed + 7, batch_size=cfg.batch_size)
        ok &= adv == pred
    return ok


def deployed_h(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec, x: torch.Tensor,
               y: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """H(x') of (12) as deployed, at the points ``x``: :func:`compose.compose` with the deployed S.
    The labels ``y`` only decide where S must be evaluated: where exactly one of the two models is
    wrong (elsewhere H is right, or wrong, whichever model answers; S is taken as 0 there)."""
    rl, cp = _logits(robust_model, x, cfg.batch_size), _logits(core_model, x, cfg.batch_size).argmax(1)
    rp = rl.argmax(1)
    selected = torch.zeros_like(rp, dtype=torch.bool)
    need = ((rp != y) ^ (cp != y)).nonzero().squeeze(1)
    if len(need):
        if spec.kind == "SR":
            selected[need] = F.softmax(rl[need], 1).max(1).values >= spec.tau
        else:
            selected[need] = eri_select(robust_model, x[need], cfg)
    return compose(selected, rp, cp)


def _selector_surrogate(spec: SelectorSpec, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample value that is large where S(x') = 1 (the attack lowers it to deselect)."""
    if spec.kind == "SR":
        return F.relu(F.log_softmax(logits, 1).max(1).values - math.log(max(spec.tau, 1e-12)))
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def _candidates(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec, x: torch.Tensor,
                y: torch.Tensor, cfg: AttackConfig) -> list[torch.Tensor]:
    """The candidate points 0-3 of the module docstring, each in B_eps(x) and [0, 1]."""
    apgd = lambda m, s: APGD(m, norm=cfg.norm, eps=cfg.eps, steps=cfg.steps, objective="ce",  # noqa: E731
                             seed=cfg.seed + s, batch_size=cfg.batch_size).perturb(x, y)
    push = lambda obj, start: pgd(obj, x, cfg.eps, cfg.push_steps, norm=cfg.norm,  # noqa: E731
                                  start=start)
    c_core = apgd(core_model, 1)
    desel: Callable[[torch.Tensor], torch.Tensor] = lambda xa: (  # noqa: E731
        F.cross_entropy(core_model(xa), y, reduction="none") - _selector_surrogate(spec, robust_model(xa)))
    c_desel = push(desel, c_core)
    x1 = apgd(robust_model, 2)
    l1 = _logits(robust_model, x1, cfg.batch_size)
    t = l1.scatter(1, y[:, None], float("-inf")).argmax(1)   # F_robust's most likely wrong class
    c_rob = push(lambda xa: F.log_softmax(robust_model(xa), 1).gather(1, t[:, None]).squeeze(1), x1)
    return [x.clone(), c_core, c_desel, x1, c_rob]


def attack_composition(robust_model: nn.Module, core_model: nn.Module, spec: SelectorSpec,
                       x: torch.Tensor, y: torch.Tensor, targets: np.ndarray, cfg: AttackConfig
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Attack H at the points where ``targets`` is True; return (fooled, h_adv_pred) per point
    (False / -1 elsewhere). Both models run in eval mode; their modes are restored afterwards."""
    fooled, h_adv = np.zeros(len(y), dtype=bool), np.full(len(y), -1, dtype=np.int64)
    idx = torch.as_tensor(np.flatnonzero(targets), dtype=torch.long)
    if len(idx) == 0 or cfg.eps == 0:
        return fooled, h_adv
    xs, ys = x[idx], y[idx]
    worst = torch.full((len(idx),), -1, dtype=torch.long)
    with eval_mode(robust_model), eval_mode(core_model):
        for cand in _candidates(robust_model, core_model, spec, xs, ys, cfg):
            h = deployed_h(robust_model, core_model, spec, cand, ys, cfg)
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
                     y: torch.Tensor, cfg: AttackConfig) -> pd.DataFrame:
    """Per-point evidence for ``compose.composition``, one block of rows per selector:
    columns index, selector (its name), h_adv_wrong, h_adv_pred (-1 where not fooled)."""
    out = []
    for spec in specs:
        targets = attack_targets(robust_df, core_df, spec.selection(robust_df))
        fooled, h_adv = attack_composition(robust_model, core_model, spec, x, y, targets, cfg)
        out.append(pd.DataFrame({"index": robust_df["index"].to_numpy(), "selector": spec.name,
                                 "h_adv_wrong": fooled, "h_adv_pred": h_adv}))
    return pd.concat(out, ignore_index=True)
