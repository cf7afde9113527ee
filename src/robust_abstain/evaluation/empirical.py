"""Attack a model once per threat model and write per-sample records (see records.py).

Guarantees: the model is in eval mode (its modes are restored afterwards); attacks stay in B_eps(x)
and [0, 1] (attacks/); robustness is tested for every point against its own prediction F(x), so
robust *inaccuracy* is measured too; ``adv_pred_2x`` is only attacked where the point survived eps
(the per-sample worst case makes the others non-robust at 2 eps anyway). The attacks run are those
of :data:`robust_abstain.attacks.ATTACKS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.records import EMPIRICAL_COLUMNS
from ..attacks import ATTACKS, NORMS, AttackInfo, eval_mode, worst_case_predictions
from ..params import Section, choice, count, non_negative, scales


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """An ``evaluate`` or ``evaluate_l2`` params section: the threat model (``norm``, ``eps``),
    APGD's budget, the test points attacked, and the scales APGD-conf (17) runs at."""

    norm: str
    eps: float
    steps: int
    restarts: int
    n_points: int
    batch_size: int
    sr_scales: list[int]
    seed: int
    n_val_points: int | None = None         # validation points (needed for the validation records)
    adaptive_push_steps: int | None = None  # PGD steps of the adaptive attack's push stages
    device: str = "auto"

    def validate(self, prefix: str = "evaluate") -> None:
        choice(self.norm, f"{prefix}.norm", NORMS)
        non_negative(self.eps, f"{prefix}.eps")
        for key in ("steps", "restarts", "n_points", "batch_size"):
            count(getattr(self, key), f"{prefix}.{key}")
        scales(self.sr_scales, f"{prefix}.sr_scales")
        count(self.seed, f"{prefix}.seed", min=0)
        for key in ("n_val_points", "adaptive_push_steps"):
            if getattr(self, key) is not None:
                count(getattr(self, key), f"{prefix}.{key}")

    def attack_scales(self) -> dict[str, tuple[int, ...]]:
        """The scales (1: eps, 2: 2 eps) each attack of ATTACKS runs at."""
        return {name: a.default_scales if a.scales_param is None else tuple(getattr(self, a.scales_param))
                for name, a in ATTACKS.items()}


def natural(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, max softmax confidence) on clean inputs, with the model in eval mode."""
    dev = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        probs = torch.cat([F.softmax(model(x[i:i + batch_size].to(dev)), 1).cpu()
                           for i in range(0, len(x), batch_size)])
    conf, pred = probs.max(1)
    return pred, conf


def _attack_columns(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor,
                    eps: float, info: AttackInfo, run_scales: Sequence[int], **kw
                    ) -> dict[str, torch.Tensor]:
    """The record columns of one attack: ``<prefix>_pred_<s>x`` and ``<prefix>_conf_<s>x`` for
    s = 1, 2 (-1 / NaN at a scale it does not run at)."""
    def attack(xs: torch.Tensor, ys: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        return worst_case_predictions(model, xs, ys, radius, objective=info.objective,
                                      stop_when_fooled=info.stop_when_fooled, **kw)

    cols: dict[str, torch.Tensor] = {}
    for s in (1, 2):
        p_col, c_col = f"{info.prefix}_pred_{s}x", f"{info.prefix}_conf_{s}x"
        if s not in run_scales:
            cols[p_col], cols[c_col] = torch.full_like(pred, -1), torch.full_like(conf, float("nan"))
        elif s == 2 and info.survivors_only and 1 in run_scales:
            adv, aconf = cols[f"{info.prefix}_pred_1x"].clone(), torch.full_like(conf, float("nan"))
            alive = (adv == pred).nonzero().squeeze(1)
            if len(alive):
                adv[alive], aconf[alive] = attack(x[alive], pred[alive], 2 * eps)
            cols[p_col], cols[c_col] = adv, aconf
        else:
            cols[p_col], cols[c_col] = attack(x, pred, s * eps)
    return cols


def empirical_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                      eps: float, norm: str = "linf", steps: int = 40, restarts: int = 1,
                      seed: int = 0, batch_size: int = 500,
                      scales: Mapping[str, Sequence[int]] | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Per-sample records (records.EMPIRICAL_COLUMNS) at eps and 2 eps: the clean prediction and
    confidence, then each attack of ATTACKS against F(x) (APGD-CE: its prediction and the
    confidence it left to F(x); APGD-conf (17) for softmax response).

    ``scales``: the scales (1: eps, 2: 2 eps) each attack runs at, by name (see
    :meth:`EvaluateConfig.attack_scales`); an attack not named runs at its ``default_scales``
    (APGD-CE at both, APGD-conf at 2 eps, which is what robust selection needs). Columns of scales
    not run hold -1 / NaN, which the selectors read as "not run"."""
    run_scales = {name: a.default_scales for name, a in ATTACKS.items()} | dict(scales or {})
    kw = dict(norm=norm, steps=steps, restarts=restarts, seed=seed, batch_size=batch_size,
              progress=progress)
    with eval_mode(model):
        pred, conf = natural(model, x)
        cols = {"index": index, "label": y, "pred": pred, "conf": conf, "eps": torch.full_like(conf, eps)}
        for name, info in ATTACKS.items():
            cols.update(_attack_columns(model, x, pred, conf, eps, info, run_scales[name], **kw))
    df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
    return df[EMPIRICAL_COLUMNS]
