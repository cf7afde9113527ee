"""Abstain models: F answers where a selector S selects and abstains elsewhere (Figure 3).

    R_rob^sel              = P[S robustly selects x]
    rob. acc. on selected  = P[robustly selected and robust-accurate] / R_rob^sel
    rob. acc. (all points) = P[robustly selected and robust-accurate]

Example::

    >>> (m,) = abstain_metrics(records, [eri(records)])
    >>> m.rob_sel, m.rob_acc_on_sel
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .records import ABSTAIN, CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, by_index, check, robust
from .selectors import Selection


@dataclass(frozen=True)
class AbstainMetrics:
    """The abstain model "F where S selects, abstain elsewhere" (fractions; NaN where S never
    selects):
        ``selected``        P[S(x) = 1]
        ``nat_acc_on_sel``  P[F(x) = y | S(x) = 1]
        ``rob_sel``         R_rob^sel = P[S robustly selects x]
        ``rob_acc_on_sel``  P[robustly selected and F robust-accurate at eps] / R_rob^sel
        ``rob_acc``         P[robustly selected and F robust-accurate at eps] (all points)
        ``rob_inacc``       P[robustly selected and F robust but wrong at eps]"""

    selected: float
    nat_acc_on_sel: float
    rob_sel: float
    rob_acc_on_sel: float
    rob_acc: float
    rob_inacc: float


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _abstain(s: Selection, correct: np.ndarray, robust_correct: np.ndarray,
             robust_wrong: np.ndarray) -> AbstainMetrics:
    rs = s.robustly_selected
    return AbstainMetrics(float(s.selected.mean()), _ratio((s.selected & correct).mean(), s.selected.mean()),
                          float(rs.mean()), _ratio((rs & robust_correct).mean(), rs.mean()),
                          float((rs & robust_correct).mean()), float((rs & robust_wrong).mean()))


def abstain_metrics(df: pd.DataFrame, selections: list[Selection]) -> list[AbstainMetrics]:
    """The abstain models of F with each selector of ``selections``, from F's empirical records.

    Robust-accurate at eps is ``accurate & robust(df, 1)``; for S_ERI it is implied by robust
    selection (robust at 2 eps), for S_SR the APGD-CE evidence at eps is added (worst case)."""
    df = by_index(check(df, EMPIRICAL_COLUMNS, "empirical records"))
    index, acc, rob1 = df["index"].to_numpy(), accurate(df), robust(df, 1)
    return [_abstain(s.aligned_to(index), acc, acc & rob1, ~acc & rob1) for s in selections]


def certified_abstain_metrics(df: pd.DataFrame, selection: Selection) -> AbstainMetrics:
    """The abstain model "G where S_CRI selects, abstain elsewhere", from certified records;
    robust-accurate means cert_pred = y (robust selection already implies a radius of at least
    eps)."""
    df = by_index(check(df, CERTIFIED_COLUMNS, "certified records"))
    cert_ok = (df["cert_pred"] == df["label"]).to_numpy()
    wrong = ((df["cert_pred"] != df["label"]) & (df["cert_pred"] != ABSTAIN)).to_numpy()
    return _abstain(selection.aligned_to(df["index"].to_numpy()), cert_ok, cert_ok, wrong)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when **both** coordinates are maximised, sorted by the
    first coordinate (ascending; ties by index). Equal points are all kept (different models may
    tie). NaN points are never on the front."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = np.isfinite(p).all(1)
    q = p[ok]
    ge = (q[None, :, 0] >= q[:, None, 0]) & (q[None, :, 1] >= q[:, None, 1])
    gt = (q[None, :, 0] > q[:, None, 0]) | (q[None, :, 1] > q[:, None, 1])
    keep = ~(ge & gt).any(1)            # row i is dominated by some column j
    front = np.flatnonzero(ok)[keep]
    return sorted(front.tolist(), key=lambda i: (p[i, 0], i))
