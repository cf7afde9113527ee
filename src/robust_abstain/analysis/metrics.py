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

Any per-point outcomes (a training loop's validation, Figure 1): :func:`rates`.

Example::

    >>> r_nat, r_rob_acc, r_rob_inacc = rates(pred == y, adv_pred == pred)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, ParamError
from .records import (ABSTAIN, CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, by_index,
                      certified_robust, check, robust)

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


def rates(accurate: Any, robust: Any) -> tuple[float, float, float]:
    """(1)/(2) from per-point outcomes: (R_nat, R_rob^acc, R_rob^-acc) = (P[accurate],
    P[accurate and robust], P[inaccurate and robust]).

    ``accurate`` (F(x) = y) and ``robust`` (F robust on the ball) are boolean numpy arrays or torch
    tensors of the same points. Tensors are averaged in torch's float32, arrays in float64."""
    if type(accurate).__module__.startswith("torch"):
        return tuple(m.float().mean().item() for m in (accurate, accurate & robust, ~accurate & robust))
    a, r = np.asarray(accurate, dtype=bool), np.asarray(robust, dtype=bool)
    return _mean(a), _mean(a & r), _mean(~a & r)


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


def model_masks(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-point outcomes of one model's empirical records, sorted by index: ``nat_acc`` and the
    splits of :func:`split_masks` at eps (``rob_acc``, ``rob_inacc``, ``nonrob_acc``,
    ``nonrob_inacc``) and at 2 eps (the same with ``_2x``)."""
    d = by_index(df)
    out = {"nat_acc": accurate(d)}
    for s, tag in ((1, ""), (2, "_2x")):
        out.update({f"{k}{tag}": v for k, v in split_masks(d, s).items()})
    return out


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


def certified_model_masks(df: pd.DataFrame, r1: float, r2: float) -> dict[str, np.ndarray]:
    """Per-point outcomes of one smoothed model's certified records, sorted by index: ``nat_acc``
    (of G) and :func:`certified_masks` at r1 (``rob_acc``, ``rob_inacc``) and r2 (``_2x``)."""
    d = by_index(df)
    out = {"nat_acc": (d["smooth_pred"] == d["label"]).to_numpy()}
    for r, tag in ((r1, ""), (r2, "_2x")):
        out.update({f"{k}{tag}": v for k, v in certified_masks(d, r).items()})
    return out


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
