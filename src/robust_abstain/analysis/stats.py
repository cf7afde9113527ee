"""Uncertainty of the rates the reports print: 95 % intervals over test points.

Every rate here is a mean of a per-point indicator over n test points (n = 1000 on the default, so
one standard error of a 10 % rate is about 1 point).

    rate_ci(mask)            exact (Clopper-Pearson) binomial interval of P[mask]
    paired_diff_ci(a, b)     P[a] - P[b] on the **same** points, with a paired bootstrap interval
                             (resampling points, so the correlation of a and b is kept)

Example::

    >>> iv = rate_ci(np.array([True] * 720 + [False] * 280))
    >>> iv.value, iv.lo, iv.hi                         # 0.72 and its exact interval
    >>> d = paired_diff_ci(h_robust_accurate, core_robust_accurate, seed=0)
    >>> d.value, d.lo, d.hi
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import proportion_confint

from ..errors import DataError, ParamError

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A rate or a difference of rates (fractions) with its 95 % interval [lo, hi]."""

    value: float
    lo: float
    hi: float

    def as_tuple(self) -> tuple[float, float, float]:
        return self.value, self.lo, self.hi


def _mask(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m)
    if m.ndim != 1 or m.size == 0:
        raise DataError(f"{name} must be a non-empty 1-d array of per-point outcomes, got shape {m.shape}")
    return m.astype(bool)


def rate_ci(mask: np.ndarray, level: float = LEVEL) -> Interval:
    """P[mask] with its exact Clopper-Pearson interval (statsmodels' ``method="beta"``)."""
    m = _mask(mask, "mask")
    if not 0 < level < 1:
        raise ParamError(f"level must be in (0, 1), got {level!r}")
    k, n = int(m.sum()), int(m.size)
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="beta")
    return Interval(k / n, float(np.nan_to_num(lo, nan=0.0)), float(np.nan_to_num(hi, nan=1.0)))


def paired_diff_ci(a: np.ndarray, b: np.ndarray, level: float = LEVEL, n_boot: int = N_BOOT,
                   seed: int = 0) -> Interval:
    """P[a] - P[b] over the same points with a paired percentile-bootstrap interval.

    The points are resampled with replacement ``n_boot`` times (seeded: same inputs, same
    interval); each resample keeps a point's pair (a_i, b_i) together, so the interval reflects the
    paired design (much narrower than two independent intervals when a and b agree on most points)."""
    a, b = _mask(a, "a"), _mask(b, "b")
    if a.shape != b.shape:
        raise DataError(f"paired outcomes need the same points, got {a.size} and {b.size}")
    if n_boot < 100:
        raise ParamError(f"n_boot must be >= 100, got {n_boot}")
    d = a.astype(np.int8) - b.astype(np.int8)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for start in range(0, n_boot, 250):   # 250 resamples at a time bounds memory for large n
        stop = min(n_boot, start + 250)
        boot[start:stop] = d[rng.integers(0, d.size, (stop - start, d.size))].mean(1)
    q = (1 - level) / 2
    lo, hi = np.quantile(boot, [q, 1 - q])
    return Interval(float(d.mean()), float(lo), float(hi))
