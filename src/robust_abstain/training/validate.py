"""Validation of a model during a fit (on the validation split only) and the selection score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..analysis.metrics import rates
from ..attacks import eval_mode
from ..attacks.pgd import pgd
from ..errors import ParamError
from ..losses import LOSSES, LossConfig, get_loss
from .batches import _generator


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def validate(model: nn.Module, ds: TensorDataset, loss_cfg: LossConfig, seed: int,
             batch_size: int = 500, device: torch.device | None = None) -> dict[str, float]:
    """Validation loss (the training objective), natural accuracy and, for adversarial losses,
    PGD robust accuracy / robust inaccuracy at the training eps (attacking the prediction F(x)).

    The model is in eval mode while it runs and in its own mode again afterwards. Its draws (PGD
    starts, noise) come from a generator on ``device`` seeded with ``seed``: the same
    in every epoch, in a resumed run and on every device type."""
    with eval_mode(model):
        loss_fn = get_loss(loss_cfg.name)
        device = device or torch.device("cpu")
        x, y = (t.to(device) for t in ds.tensors)
        g = _generator(device, seed)
        total, n = 0.0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            loss, _ = loss_fn(model, xb, yb, loss_cfg, g)
            total += loss.item() * len(xb)
            n += len(xb)
        pred = _predict(model, x)
        out = {"val_loss": total / n, "val_nat_acc": (pred == y).float().mean().item()}
        if loss_cfg.eps > 0 and LOSSES[loss_cfg.name].kind != "noise":
            adv = []
            for i in range(0, len(x), batch_size):
                xb, pb = x[i:i + batch_size], pred[i:i + batch_size]
                xa = pgd(lambda xa: F.cross_entropy(model(xa), pb, reduction="none"), xb, loss_cfg.eps,
                         max(loss_cfg.pgd_steps, 1), norm=loss_cfg.norm, generator=g)
                adv.append(_predict(model, xa))
            _, out["val_rob_acc"], out["val_rob_inacc"] = rates(pred == y, torch.cat(adv) == pred)
            out["val_rob_acc_minus_inacc"] = out["val_rob_acc"] - out["val_rob_inacc"]
        return out


def _score(metrics: dict[str, float], select: str, epoch: int) -> float:
    """Higher is better; ``select="last"`` ranks by ``epoch`` (0-based; -1: the initial model)."""
    if select == "last":
        return epoch
    if select == "val_loss":
        return -metrics["val_loss"]
    if select not in metrics:
        raise ParamError(f"select={select!r} needs an adversarial loss (metric not computed)")
    return metrics[select]
