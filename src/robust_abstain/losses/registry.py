"""The training objectives by name, with what the rest of the pipeline needs to know about each.

Adding a loss: write ``loss(model, x, y, cfg, generator) -> (scalar, stats)`` (in adversarial.py or
smoothing.py), add one :class:`LossSpec` here (its place in the dict is its place in the figures'
legends), a params entry (a sweep or a model section) and a test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from ..errors import ParamError
from .adversarial import ce_loss, dga_loss, era_loss, mart_loss, mma_loss, trades_loss
from .common import Stats
from .config import LossConfig
from .smoothing import cra_loss, noise_loss

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, LossConfig, "torch.Generator | None"],
                  tuple[torch.Tensor, Stats]]


@dataclass(frozen=True)
class LossSpec:
    """A training objective and its metadata.

    ``kind``: ``"standard"`` (no threat model), ``"adversarial"`` (an inner attack in B_eps(x); needs
    ``eps > 0``; validation measures PGD robustness) or ``"noise"`` (Gaussian noise for randomized
    smoothing). ``label``: its name in tables and figures. ``reference``: the loss whose fine-tunes a
    fine-tune with this loss is compared against in the report (the paper's baseline), if any."""

    fn: LossFn
    kind: Literal["standard", "adversarial", "noise"]
    label: str
    equation: str | None = None
    reference: str | None = None


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(ce_loss, "standard", "CE"),
    "trades": LossSpec(trades_loss, "adversarial", "TRADES", "(5)"),
    "era": LossSpec(era_loss, "adversarial", "ERA", "(4)", reference="trades"),
    "mart": LossSpec(mart_loss, "adversarial", "MART"),
    "dga": LossSpec(dga_loss, "adversarial", "DGA", "(18)"),
    "mma": LossSpec(mma_loss, "adversarial", "MMA"),  # baseline (Ding et al. 2020), like MART
    "noise": LossSpec(noise_loss, "noise", "noise", "(8)"),
    "cra": LossSpec(cra_loss, "noise", "CRA", "(7), (9)", reference="noise"),
}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ParamError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name].fn
