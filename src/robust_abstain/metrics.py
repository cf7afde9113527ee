"""Accuracy metrics (1)/(2) of the paper, computed from per-sample records (records.py).

All quantities are **fractions** in [0, 1]; the report formats them as percent.

Empirical records, at scale s (1 -> B_eps, 2 -> B_2eps; robustness is the per-sample worst case of
``records.robust``):
    (1) R_nat          = P[F(x) = y]
        R_rob^acc      = P[F(x) = y  and  F robust on B_{s eps}(x)]
    (2) R_rob^-acc     = P[F(x) != y and  F robust on B_{s eps}(x)]
    splits (Tables 7/8): robust & accurate, robust & inaccurate, non-robust & accurate,
        non-robust & inaccurate; they partition the points, so they sum to 1.

Certified records (randomized smoothing), at an L2 radius r, for the smoothed classifier G:
    R_nat          = P[smooth_pred = y]                       (PREDICT; abstain counts as wrong)
    R_rob^acc      = P[cert_pred = y and cert_radius >= r]     (certified robust accuracy)
    R_rob^-acc     = P[cert_pred != y, cert_pred != ABSTAIN and cert_radius >= r]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, ParamError
from .records import (ABSTAIN, CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, certified_robust,
                      check, robust)

SPLIT_KEYS = ("rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc")


def _mean(mask: np.ndarray) -> float:
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        raise DataError("records are empty: no test points to measure")
    return float(mask.mean())


def _scale(eps_scale: int) -> int:
    if eps_scale not in (1, 2):
        raise ParamError(f"eps_scale must be 1 (eps) or 2 (2 * eps), got {eps_scale!r}")
    return int(eps_scale)


# ---------------------------------------------------------------------------------- empirical
def natural_accuracy(df: pd.DataFrame) -> float:
    """(1) R_nat = P[F(x) = y]."""
    return _mean(accurate(df))


def robust_accuracy(df: pd.DataFrame, eps_scale: int = 1) -> float:
    """(1) R_rob^acc: accurate and robust on B_{eps_scale * eps}(x)."""
    return _mean(accurate(df) & robust(df, _scale(eps_scale)))


def robust_inaccuracy(df: pd.DataFrame, eps_scale: int = 1) -> float:
    """(2) R_rob^-acc: inaccurate but robust on B_{eps_scale * eps}(x) (robust misclassification)."""
    return _mean(~accurate(df) & robust(df, _scale(eps_scale)))


def split_masks(df: pd.DataFrame, eps_scale: int = 1) -> dict[str, np.ndarray]:
    """The four splits of Tables 7/8 at B_{eps_scale * eps} as per-point masks (in ``df``'s row
    order; they partition the points). Keys as :func:`splits`."""
    check(df, EMPIRICAL_COLUMNS, "empirical records")
    a, r = accurate(df), robust(df, _scale(eps_scale))
    return {"rob_acc": a & r, "rob_inacc": ~a & r, "nonrob_acc": a & ~r, "nonrob_inacc": ~a & ~r}


def splits(df: pd.DataFrame, eps_scale: int = 1) -> dict[str, float]:
    """The four splits of Tables 7/8 at B_{eps_scale * eps}; they sum to 1.

    Keys: ``rob_acc`` (robust & accurate), ``rob_inacc`` (robust & inaccurate),
    ``nonrob_acc`` (non-robust & accurate), ``nonrob_inacc`` (non-robust & inaccurate)."""
    return {k: _mean(m) for k, m in split_masks(df, eps_scale).items()}


def summary(df: pd.DataFrame, eps_scale: int = 1) -> dict[str, float]:
    """R_nat (1), R_rob^acc (1), R_rob^-acc (2) and the four splits at B_{eps_scale * eps}.

    Keys: ``n``, ``nat_acc``, ``rob_acc``, ``rob_inacc``, ``nonrob_acc``, ``nonrob_inacc``
    (``rob_acc``/``rob_inacc`` are both a metric of the paper and a split)."""
    out: dict[str, float] = {"n": int(len(df)), "nat_acc": natural_accuracy(df)}
    out.update(splits(df, eps_scale))
    return out


# ---------------------------------------------------------------------------------- certified
def certified_natural_accuracy(df: pd.DataFrame) -> float:
    """R_nat of the smoothed classifier G: PREDICT's class equals y (an abstention is wrong)."""
    check(df, CERTIFIED_COLUMNS, "certified records")
    return _mean((df["smooth_pred"] == df["label"]).to_numpy())


def certified_masks(df: pd.DataFrame, radius: float) -> dict[str, np.ndarray]:
    """Per-point certified outcomes at L2 radius r (``df``'s row order): ``rob_acc`` (cert_pred =
    y and cert_radius >= r) and ``rob_inacc`` (cert_pred not ABSTAIN, != y, cert_radius >= r)."""
    check(df, CERTIFIED_COLUMNS, "certified records")
    c = certified_robust(df, radius)
    wrong = ((df["cert_pred"] != df["label"]) & (df["cert_pred"] != ABSTAIN)).to_numpy()
    return {"rob_acc": c & (df["cert_pred"] == df["label"]).to_numpy(), "rob_inacc": c & wrong}


def certified_robust_accuracy(df: pd.DataFrame, radius: float) -> float:
    """Certified R_rob^acc at L2 radius r: cert_pred = y and cert_radius >= r."""
    return _mean(certified_masks(df, radius)["rob_acc"])


def certified_robust_inaccuracy(df: pd.DataFrame, radius: float) -> float:
    """Certified R_rob^-acc at L2 radius r: cert_pred not ABSTAIN, != y, and cert_radius >= r."""
    return _mean(certified_masks(df, radius)["rob_inacc"])


def certified_summary(df: pd.DataFrame, radius: float) -> dict[str, float]:
    """Keys: ``n``, ``nat_acc`` (of G), ``rob_acc``, ``rob_inacc`` (certified, at ``radius``),
    ``abstain`` (fraction where CERTIFY abstains)."""
    if not np.isfinite(radius) or radius < 0:
        raise ParamError(f"radius must be finite and >= 0, got {radius!r}")
    return {"n": int(len(df)), "nat_acc": certified_natural_accuracy(df),
            "rob_acc": certified_robust_accuracy(df, radius),
            "rob_inacc": certified_robust_inaccuracy(df, radius),
            "abstain": _mean((df["cert_pred"] == ABSTAIN).to_numpy())}


def certified_accuracy_curve(df: pd.DataFrame, radii: np.ndarray) -> np.ndarray:
    """Certified robust accuracy at each radius (the usual certified-accuracy-vs-radius curve)."""
    return np.array([certified_robust_accuracy(df, float(r)) for r in np.asarray(radii)])


# ---------------------------------------------------------------------------------- alignment
def by_index(df: pd.DataFrame, name: str = "records") -> pd.DataFrame:
    """Records sorted by ``index`` (``df`` itself when already sorted: do not mutate the result);
    raises :class:`DataError` on duplicated indices."""
    if "index" not in df.columns:
        raise DataError(f"{name} lacks the 'index' column")
    idx = df["index"]
    if idx.is_monotonic_increasing and idx.is_unique:
        return df
    if idx.duplicated().any():
        dup = df.loc[df["index"].duplicated(), "index"].iloc[0]
        raise DataError(f"{name} has test point index {dup} more than once")
    return df.sort_values("index", kind="stable").reset_index(drop=True)


def align(*dfs: pd.DataFrame, names: list[str] | None = None) -> list[pd.DataFrame]:
    """Sort every record set by ``index`` and check they cover the same test points."""
    names = names or [f"records #{i}" for i in range(len(dfs))]
    out = [by_index(d, n) for d, n in zip(dfs, names)]
    ref = out[0]["index"].to_numpy()
    for d, n in zip(out[1:], names[1:]):
        idx = d["index"].to_numpy()
        if len(idx) != len(ref) or not np.array_equal(idx, ref):
            only = sorted(set(ref.tolist()) ^ set(idx.tolist()))[:5]
            raise DataError(f"{names[0]} and {n} cover different test points "
                            f"({len(ref)} vs {len(idx)} rows; e.g. index {only})")
    return out
