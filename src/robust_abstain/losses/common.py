"""Pieces shared by the training objectives: the inner attack, KL, the soft qualifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import eval_mode
from ..attacks.pgd import pgd
from .config import LossConfig

Stats = dict[str, float]


def _attack(model: nn.Module, objective, x: torch.Tensor, cfg: LossConfig, generator,
            maximize: bool = True) -> torch.Tensor:
    with eval_mode(model):
        return pgd(objective, x, cfg.eps, cfg.pgd_steps, step_size=cfg.step_size, norm=cfg.norm,
                   random_start=True, generator=generator, maximize=maximize)


def kl_div(logits_nat: torch.Tensor, logits_adv: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Per-sample KL(f(x) || f(x')), summed (TRADES) or averaged (authors) over classes."""
    p = F.softmax(logits_nat, dim=1)
    kl = (p * (F.log_softmax(logits_nat, dim=1) - F.log_softmax(logits_adv, dim=1))).sum(1)
    return kl / logits_nat.shape[1] if reduction == "mean" else kl


def most_likely_other(logits: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """argmax_{c != exclude} logits_c, per row."""
    return logits.scatter(1, exclude[:, None], float("-inf")).argmax(1)


def soft_inaccuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The soft qualifier 1 - f(x)_y that replaces the indicator 1{F(x) != y} in (3)."""
    return 1 - F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
