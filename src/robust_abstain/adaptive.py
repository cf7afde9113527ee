"""An adaptive end-to-end attack on the composition (12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x)
with the robustness-indicator selector S_ERI(x') = 1{F_robust robust on B_eps(x')}.

The paper scores H with a rule: robustly selected points get F_robust's robust accuracy, the others
F_core's. Given exact robustness checks the first branch is sound (F_robust robust on B_2eps(x)
means S = 1 and F_robust constant on all of B_eps(x)). The second is not: for a point the selector
does not robustly select, the attacker may move to an x' in B_eps(x) where S(x') = 1 *and*
F_robust(x') is wrong; H then answers F_robust(x') != y, although F_core was robust there.

Since x lies in B_eps(x') for every x' in B_eps(x), S(x') = 1 forces F_robust(x') = F_robust(x):
only points where F_robust(x) is *wrong* can be fooled this way (:func:`attack_targets`). The
attack, for every such point the rule counts as robust-accurate through the core branch:
 1. APGD-CE on F_robust against y in B_eps(x): a point x1 where F_robust is wrong (if any);
 2. PGD towards that wrong class t = F_robust(x1), still inside B_eps(x), to reach a region where
    F_robust is *confidently* wrong (so that it is robust there);
 3. the selector's own check at x2: APGD-CE on F_robust against F_robust(x2) in B_eps(x2). If it
    finds no flip, S(x2) = 1 as the deployed selector would decide, and H(x2) = t != y.
Records ``h_adv_wrong`` per point (True: H fooled). Points the rule already counts as non-robust
are not attacked (they cannot lower the number further).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attacks.apgd import APGD, worst_case_predictions
from .attacks.pgd import pgd, project
from .records import accurate, robust


def rule_core_branch(robust_df: pd.DataFrame, core_df: pd.DataFrame) -> np.ndarray:
    """Points the paper's rule scores through F_core (not robustly selected) as robust-accurate."""
    return ~robust(robust_df, 2) & accurate(core_df) & robust(core_df, 1)


def attack_targets(robust_df: pd.DataFrame, core_df: pd.DataFrame) -> np.ndarray:
    """Where the selector route can fool H: core-branch points with F_robust(x) != y.

    Every x' in B_eps(x) has x in B_eps(x'), so S(x') = 1 forces F_robust(x') = F_robust(x);
    where F_robust(x) = y, H(x') is then right. (Those points remain exposed only to the core
    attack, which the rule already counts.)"""
    return rule_core_branch(robust_df, core_df) & ~accurate(robust_df)


def attack_composition(robust_model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: np.ndarray,
                       eps: float, norm: str = "linf", steps: int = 40, push_steps: int = 20,
                       seed: int = 0, batch_size: int = 500, progress: bool = False) -> np.ndarray:
    """Return a bool array: True where H can be fooled through the selector (attacked only at ``targets``)."""
    fooled = np.zeros(len(y), dtype=bool)
    idx = torch.as_tensor(np.flatnonzero(targets), dtype=torch.long)
    if len(idx) == 0 or eps == 0:
        return fooled
    robust_model.eval()
    xs, ys = x[idx], y[idx]
    # 1. a point where F_robust is wrong
    x1 = APGD(robust_model, norm=norm, eps=eps, steps=steps, objective="ce", seed=seed,
              batch_size=batch_size, progress=progress).perturb(xs, ys)
    with torch.no_grad():
        t = robust_model(x1).argmax(1)
    wrong = t != ys
    if not wrong.any():
        return fooled
    w = wrong.nonzero().squeeze(1)
    xw, x1w, tw = xs[w], x1[w], t[w]
    # 2. push towards the wrong class t, inside B_eps(x) (start at x1; pgd's random start is off)
    g = torch.Generator().manual_seed(seed + 1)
    x2 = pgd(lambda xa: -F.cross_entropy(robust_model(torch.clamp(xa, 0, 1)), tw, reduction="none"),
             x1w, eps, push_steps, norm=norm, random_start=False, generator=g)
    # pgd projected onto the ball around x1; re-project onto the ball around the original x
    x2 = project(x2, xw, eps, norm)
    with torch.no_grad():
        still = robust_model(x2).argmax(1) != ys[w]
    x2 = torch.where(still.view(-1, *[1] * (x2.dim() - 1)), x2, x1w)
    with torch.no_grad():
        t2 = robust_model(x2).argmax(1)
    # 3. the selector's own robustness check at x2, in B_eps(x2)
    adv, _ = worst_case_predictions(robust_model, x2, t2, eps, norm=norm, steps=steps, objective="ce",
                                    seed=seed + 2, batch_size=batch_size, progress=progress)
    selected_and_wrong = (adv == t2) & (t2 != ys[w])
    fooled[idx[w[selected_and_wrong]].numpy()] = True
    return fooled


def adaptive_records(robust_model: nn.Module, robust_df: pd.DataFrame, core_df: pd.DataFrame,
                     x: torch.Tensor, y: torch.Tensor, eps: float, **kw) -> pd.DataFrame:
    """Per-point evidence for ``compose.compose_adaptive``: columns index, h_adv_wrong."""
    targets = attack_targets(robust_df, core_df)
    fooled = attack_composition(robust_model, x, y, targets, eps, **kw)
    return pd.DataFrame({"index": robust_df["index"].to_numpy(), "h_adv_wrong": fooled})
