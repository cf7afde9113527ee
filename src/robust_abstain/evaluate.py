"""Attack a model once per threat model and write per-sample records (see records.py).

Guarantees: the model is in eval mode; attacks stay in B_eps(x) and [0, 1] (attacks/); robustness is
tested for every point against its own prediction F(x), so robust *inaccuracy* is measured too;
``adv_pred_2x`` is only attacked where the point survived eps (the per-sample worst case makes the
others non-robust at 2 eps anyway)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attacks.apgd import worst_case_predictions
from .records import EMPIRICAL_COLUMNS


@torch.no_grad()
def natural(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, max softmax confidence) on clean inputs."""
    model.eval()
    dev = next(model.parameters()).device
    probs = torch.cat([F.softmax(model(x[i:i + batch_size].to(dev)), 1).cpu() for i in range(0, len(x), batch_size)])
    conf, pred = probs.max(1)
    return pred, conf


def empirical_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                      eps: float, norm: str = "linf", steps: int = 40, restarts: int = 1,
                      seed: int = 0, batch_size: int = 500, sr_scales: tuple[int, ...] = (2,),
                      progress: bool = True) -> pd.DataFrame:
    """Per-sample records at eps and 2 eps: APGD-CE on F(x) (its prediction and the confidence it
    left to F(x)), and APGD-conf (17) for softmax response at the scales in ``sr_scales`` (robust selection needs only 2 eps; columns of scales not run
    hold -1 / NaN, which the selectors read as "not run")."""
    model.eval()
    pred, conf = natural(model, x)
    kw = dict(norm=norm, steps=steps, restarts=restarts, seed=seed, batch_size=batch_size)
    adv1, aconf1 = worst_case_predictions(model, x, pred, eps, objective="ce", progress=progress, **kw)
    adv2, aconf2 = adv1.clone(), torch.full_like(conf, float("nan"))
    alive = (adv1 == pred).nonzero().squeeze(1)
    if len(alive):
        adv2[alive], aconf2[alive] = worst_case_predictions(model, x[alive], pred[alive], 2 * eps,
                                                            objective="ce", progress=progress, **kw)
    cols = {"index": index, "label": y, "pred": pred, "conf": conf, "eps": torch.full_like(conf, eps),
            "adv_pred_1x": adv1, "adv_conf_1x": aconf1, "adv_pred_2x": adv2, "adv_conf_2x": aconf2}
    for tag, scale in (("1x", 1), ("2x", 2)):
        if scale in sr_scales:
            # a point whose prediction the attack changed fails SR robust selection at every tau,
            # so fooled points can leave the attack early (sr_conf is then p_F(x) at that point)
            sp, sc = worst_case_predictions(model, x, pred, scale * eps, objective="conf",
                                            progress=progress, stop_when_fooled=True, **kw)
        else:
            sp, sc = torch.full_like(pred, -1), torch.full_like(conf, float("nan"))
        cols[f"sr_pred_{tag}"], cols[f"sr_conf_{tag}"] = sp, sc
    df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
    return df[EMPIRICAL_COLUMNS]
