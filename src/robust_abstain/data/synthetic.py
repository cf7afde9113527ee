"""The paper's Figure 1 data: three 2-D Gaussian classes, overlapping so that some points are
inaccurate for any classifier. Inputs are scaled into [0, 1]^2 so attacks use the same box."""

from __future__ import annotations

import math

import torch

from ..params import count, positive, probability
from . import Prepared, split_train_val

CENTERS = torch.tensor([[0.30, 0.35], [0.70, 0.35], [0.50, 0.70]])


def make_gaussians(n: int, std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CENTERS)
    y = y[torch.randperm(n, generator=g)]
    x = CENTERS[y] + std * torch.randn(n, 2, generator=g)
    return x.clamp(0, 1), y


def prepare_synthetic(cfg: dict, seed: int) -> Prepared:
    n = count(cfg.get("n", 1000), "synthetic.n", min=10)
    n_test = count(cfg.get("n_test", 1000), "synthetic.n_test", min=1)
    std = positive(cfg.get("std", 0.1), "synthetic.std")
    val_fraction = probability(cfg.get("val_fraction", 0.2), "synthetic.val_fraction")
    x, y = make_gaussians(n, std, seed)
    x_te, y_te = make_gaussians(n_test, std, seed + 1)
    x_tr, y_tr, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    return Prepared("synthetic", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=3,
                    mean=[0.5, 0.5], std=[math.sqrt(1 / 12)] * 2, class_names=["0", "1", "2"])
