"""The paper's Figure 1 data: three 2-D Gaussian classes in [0, 1]^2 (the attacks' box).

The default layout is the figure's regime: two large, well-separated classes (0 and 1) and a
small, tight class 2 beside class 1, so close that any region holding class 2 has many class-1
points within the attack radius. A standard model carves class 2 out (natural accuracy ~100 %)
and those class-1 points are not robust; a robust (TRADES) model gives class 2 up, and its points
become robust and inaccurate, which is what ERA (4) avoids. ``data.centers``, ``data.std`` and ``data.weights`` in
params override the layout.
"""

from __future__ import annotations

import math

import torch

from ..errors import ParamError
from ..params import count, positive, probability
from . import Prepared, split_train_val

#: class means: 0 and 1 are 0.62 apart (4.4 std from each mean to their midline); class 2 is 0.23
#: (3.3 std) from class 1's mean, where class-1 points are sparse yet close to any region holding it
CENTERS = ((0.27, 0.27), (0.72, 0.70), (0.55, 0.86))
#: per-class standard deviations (a number, or an (x, y) pair); class 2 is tight
STDS = (0.07, 0.07, 0.025)
#: class proportions (normalised); class 2 is the small class (2 %)
WEIGHTS = (0.49, 0.49, 0.02)


def _as_tensor(value, key: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ParamError(f"{key} must be a number or a (nested) list of numbers, got {value!r}") from None


def _per_class(value, k: int, key: str) -> torch.Tensor:
    """``value`` as a (k, 2) tensor: a number, k numbers or k (x, y) pairs."""
    t = _as_tensor(value, key)
    if t.dim() == 0:
        t = t.expand(k, 2)
    elif t.dim() == 1 and len(t) == k:
        t = t[:, None].expand(k, 2)
    if t.shape != (k, 2):
        raise ParamError(f"{key} must be a number, {k} numbers or {k} (x, y) pairs, got {value!r}")
    return t.clone()


def class_labels(n: int, weights: torch.Tensor) -> torch.Tensor:
    """n labels in class order, class c taking n * w_c / sum(w) of them to within one (stratified:
    label i is the first class whose cumulative share reaches (i + 1/2) / n)."""
    cum = torch.cumsum(weights / weights.sum(), 0)
    return torch.searchsorted(cum, (torch.arange(n) + 0.5) / n).clamp(max=len(weights) - 1)


def make_gaussians(n: int, centers: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points x ~ N(centers[y], diag(stds[y]^2)) clamped into [0, 1]^2, with class sizes set by
    ``weights`` (:func:`class_labels`) and a seeded order; same arguments -> same points."""
    g = torch.Generator().manual_seed(seed)
    y = class_labels(n, weights)
    y = y[torch.randperm(n, generator=g)]
    x = centers[y] + stds[y] * torch.randn(n, 2, generator=g)
    return x.clamp(0, 1), y


def layout(cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centers, stds, weights) from ``cfg`` (defaults: :data:`CENTERS`, :data:`STDS`,
    :data:`WEIGHTS`), validated: centers in [0, 1]^2, stds and weights positive."""
    centers = _as_tensor(cfg.get("centers", CENTERS), "synthetic.centers")
    if centers.dim() != 2 or centers.shape[1] != 2 or len(centers) < 2:
        raise ParamError(f"synthetic.centers must be >= 2 (x, y) pairs, got {cfg.get('centers')!r}")
    if not ((centers >= 0) & (centers <= 1)).all():
        raise ParamError("synthetic.centers must lie in [0, 1]^2")
    k = len(centers)
    stds = _per_class(cfg.get("std", STDS), k, "synthetic.std")
    weights = _as_tensor(cfg.get("weights", WEIGHTS), "synthetic.weights")
    if weights.shape not in ((), (k,)):
        raise ParamError(f"synthetic.weights must be a number or {k} numbers, got {cfg.get('weights')!r}")
    weights = weights.expand(k).clone()
    for v in stds.flatten().tolist():
        positive(v, "synthetic.std")
    for v in weights.tolist():
        positive(v, "synthetic.weights")
    return centers, stds, weights


def prepare_synthetic(cfg: dict, seed: int) -> Prepared:
    """Train (split into train / val) and test points of the 3-Gaussians, drawn with seeds
    ``seed`` and ``seed + 1``."""
    unknown = sorted(set(cfg) - {"n", "n_test", "val_fraction", "centers", "std", "weights"})
    if unknown:
        raise ParamError(f"synthetic.data: unknown keys {unknown}")
    n = count(cfg.get("n", 1000), "synthetic.n", min=10)
    n_test = count(cfg.get("n_test", 1000), "synthetic.n_test", min=1)
    val_fraction = probability(cfg.get("val_fraction", 0.2), "synthetic.val_fraction")
    centers, stds, weights = layout(cfg)
    x, y = make_gaussians(n, centers, stds, weights, seed)
    x_te, y_te = make_gaussians(n_test, centers, stds, weights, seed + 1)
    x_tr, y_tr, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    k = len(centers)
    return Prepared("synthetic", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=k,
                    mean=[0.5, 0.5], std=[math.sqrt(1 / 12)] * 2, class_names=[str(c) for c in range(k)])
