"""Selectors S: X -> {0, 1} as boolean arrays over the test points, computed from records.

Each selector carries two per-point quantities:

``selected``
    S(x) at the clean point. It decides which model answers x in a composition (12), so it drives
    the composition's natural accuracy.
``robustly_selected``
    S(x') = 1 for **every** x' in B_eps(x). By Appendix A.3 a robustness indicator is itself robust
    at x only if F is robust on B_2eps(x) (every x' in B_eps(x) then has its whole B_eps(x') inside
    B_2eps(x)), so every ``robustly_selected`` below uses the 2 * eps evidence.

Selectors:
    (10)/(14) S_ERI  empirical robustness indicator of F          :func:`eri`
    (11)      S_CRI  certified robustness indicator of smoothed G  :func:`cri` (rule "sound"/"paper")
    (13)      S_SR   softmax response at threshold tau            :func:`softmax_response`

Abstain models (F answers where S selects, abstains elsewhere) are scored by
:func:`abstain_metrics` / :func:`certified_abstain_metrics`:
    R_rob^sel              = P[S robustly selects x]
    rob. acc. on selected  = P[robustly selected and robust-accurate] / R_rob^sel
    rob. acc. (all points) = P[robustly selected and robust-accurate]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, ParamError
from .metrics import by_index
from .records import (ABSTAIN, CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, certified_robust,
                      check, robust, worst_confidence)

#: the softmax-response threshold grid (13): tau in {0.00, 0.01, ..., 0.99}
TAU_GRID: np.ndarray = np.round(np.arange(100) / 100.0, 2)

CRI_RULES = ("sound", "paper")


@dataclass(frozen=True, eq=False)
class Selection:
    """A selector evaluated on a set of test points (sorted by ``index``).

    ``name`` is a human label (e.g. ``"ERI"``, ``"SR@0.90"``, ``"CRI[sound]"``); ``params`` holds the
    selector's parameters (tau, rule, eps)."""

    name: str
    index: np.ndarray
    selected: np.ndarray
    robustly_selected: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.index)
        for k in ("selected", "robustly_selected"):
            v = np.asarray(getattr(self, k), dtype=bool)
            if v.shape != (n,):
                raise DataError(f"selection {self.name}: {k} has shape {v.shape}, expected ({n},)")
            object.__setattr__(self, k, v)
        object.__setattr__(self, "index", np.asarray(self.index))
        if np.any(self.robustly_selected & ~self.selected):
            raise DataError(f"selection {self.name}: a point is robustly selected but not selected at "
                            f"x itself (x is in B_eps(x)); the records are inconsistent")

    @property
    def selection_rate(self) -> float:
        """P[S(x) = 1] at clean points."""
        return float(self.selected.mean())

    @property
    def robust_selection(self) -> float:
        """R_rob^sel = P[S(x') = 1 for all x' in B_eps(x)]."""
        return float(self.robustly_selected.mean())

    def aligned_to(self, index: np.ndarray) -> "Selection":
        """This selection re-ordered to ``index`` (which must be the same set of points)."""
        index = np.asarray(index)
        if len(index) != len(self.index) or not np.array_equal(np.sort(index), np.sort(self.index)):
            raise DataError(f"selection {self.name} covers different test points than the records")
        if np.array_equal(index, self.index):
            return self
        pos = pd.Series(np.arange(len(self.index)), index=self.index).loc[index].to_numpy()
        return Selection(self.name, index, self.selected[pos], self.robustly_selected[pos],
                         dict(self.params))


# ---------------------------------------------------------------------------------- S_ERI
def eri(df: pd.DataFrame) -> Selection:
    """(10)/(14) S_ERI(x) = 1{F robust on B_eps(x)} of the model whose records are ``df``.

    selected = robust(df, 1); robustly_selected = robust(df, 2) (Appendix A.3; per-sample worst
    case: a point non-robust at eps is non-robust at 2 eps)."""
    df = by_index(check(df, EMPIRICAL_COLUMNS, "empirical records"))
    return Selection("ERI", df["index"].to_numpy(), robust(df, 1), robust(df, 2), {})


# ---------------------------------------------------------------------------------- S_SR
def has_softmax_response(df: pd.DataFrame) -> bool:
    """True when the records hold APGD-conf (17) evidence at 2 eps (``evaluate`` ran it)."""
    return "sr_conf_2x" in df.columns and bool(np.isfinite(df["sr_conf_2x"].to_numpy(float)).any())


def _sr_evidence(df: pd.DataFrame) -> dict[str, np.ndarray]:
    df = by_index(check(df, EMPIRICAL_COLUMNS, "empirical records"))
    if not has_softmax_response(df):
        raise DataError("records hold no APGD-conf evidence (sr_conf_2x is all NaN): re-run "
                        "evaluate with the softmax-response attack to use S_SR")
    return {"index": df["index"].to_numpy(), "conf": df["conf"].to_numpy(float),
            "robust_2x": robust(df, 2), "worst_conf_2x": worst_confidence(df, 2)}


def _sr_select(ev: dict[str, np.ndarray], tau: float) -> Selection:
    if not (0.0 <= float(tau) <= 1.0):
        raise ParamError(f"softmax-response threshold tau must be in [0, 1], got {tau!r}")
    sel = ev["conf"] >= tau
    rob = sel & ev["robust_2x"] & (ev["worst_conf_2x"] >= tau)
    return Selection(f"SR@{tau:.2f}", ev["index"], sel, rob, {"tau": float(tau)})


def softmax_response(df: pd.DataFrame, tau: float) -> Selection:
    """(13) S_SR(x) = 1{max_c f(x)_c >= tau}, attacked with APGD-conf (17) and APGD-CE.

    selected(x)          = conf >= tau
    robustly_selected(x) = conf >= tau, the lowest confidence f(x')_{F(x)} that any attack run in
                           B_2eps(x) reached (APGD-CE and APGD-conf, at eps and at 2 eps: B_eps(x)
                           lies inside B_2eps(x)) stays >= tau (:func:`records.worst_confidence`;
                           max_c f(x')_c >= f(x')_{F(x)}, so S_SR(x') = 1 there), and no attack
                           changed F(x) (the attacks stop at the first flip, so a confidence recorded
                           after one is not a minimum). For tau > 1/2 the last condition is implied;
                           below 1/2 it makes S_SR's robust selection a subset of S_ERI's: the
                           attacks cannot show more."""
    return _sr_select(_sr_evidence(df), float(tau))


def softmax_response_sweep(df: pd.DataFrame, taus: np.ndarray | None = None) -> list[Selection]:
    """S_SR at every tau of ``taus`` (default :data:`TAU_GRID`, 0 ... 0.99)."""
    taus = TAU_GRID if taus is None else np.asarray(taus, dtype=float)
    ev = _sr_evidence(df)
    return [_sr_select(ev, float(t)) for t in taus]


# ---------------------------------------------------------------------------------- S_CRI
def cri(df: pd.DataFrame, eps: float, rule: str = "sound") -> Selection:
    """(11) S_CRI(x) = 1{smoothed G certifies x with an L2 radius of at least eps}.

    selected(x) = cert_pred != ABSTAIN and cert_radius >= eps.
    robustly_selected(x):
        rule="sound": cert_radius >= 2 * eps (Appendix A.3: every x' in B_eps(x) then keeps a radius
                      of at least eps, so S_CRI(x') = 1);
        rule="paper": cert_radius >= eps, as the paper's evaluation counts it (optimistic: a point
                      x' near the border of B_eps(x) may have a radius below eps).
    The name carries the rule, e.g. ``CRI[sound]``."""
    if rule not in CRI_RULES:
        raise ParamError(f"CRI rule must be one of {list(CRI_RULES)}, got {rule!r}")
    if not np.isfinite(eps) or eps <= 0:
        raise ParamError(f"eps must be finite and > 0, got {eps!r}")
    df = by_index(check(df, CERTIFIED_COLUMNS, "certified records"))
    sel = certified_robust(df, eps)
    rob = certified_robust(df, 2 * eps if rule == "sound" else eps)
    return Selection(f"CRI[{rule}]", df["index"].to_numpy(), sel, rob,
                     {"rule": rule, "eps": float(eps)})


# ---------------------------------------------------------------------------------- abstain models
def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def abstain_metrics(df: pd.DataFrame, selection: Selection) -> dict[str, float]:
    """Abstain model "F where S selects, abstain elsewhere", from empirical records of F.

    Keys:
        ``selected``        P[S(x) = 1]
        ``nat_acc_on_sel``  P[F(x) = y | S(x) = 1]
        ``rob_sel``         R_rob^sel = P[S robustly selects x]
        ``rob_acc_on_sel``  P[robustly selected and F robust-accurate at eps] / R_rob^sel
        ``rob_acc``         P[robustly selected and F robust-accurate at eps] (all points)
        ``rob_inacc``       P[robustly selected and F robust but wrong at eps]
    Robust-accurate at eps is ``accurate & robust(df, 1)``; for S_ERI it is implied by robust
    selection (robust at 2 eps), for S_SR the APGD-CE evidence at eps is added (worst case)."""
    return abstain_metrics_many(df, [selection])[0]


def abstain_metrics_many(df: pd.DataFrame, selections: list[Selection]) -> list[dict[str, float]]:
    """:func:`abstain_metrics` for many selectors of the same model (records prepared once)."""
    df = by_index(check(df, EMPIRICAL_COLUMNS, "empirical records"))
    index, acc, rob1 = df["index"].to_numpy(), accurate(df), robust(df, 1)
    out = []
    for s in selections:
        s = s.aligned_to(index)
        rs = s.robustly_selected
        good = rs & acc & rob1
        out.append({"selected": float(s.selected.mean()),
                    "nat_acc_on_sel": _ratio((s.selected & acc).mean(), s.selected.mean()),
                    "rob_sel": float(rs.mean()),
                    "rob_acc_on_sel": _ratio(good.mean(), rs.mean()),
                    "rob_acc": float(good.mean()),
                    "rob_inacc": float((rs & ~acc & rob1).mean())})
    return out


def certified_abstain_metrics(df: pd.DataFrame, selection: Selection) -> dict[str, float]:
    """The abstain model "G where S_CRI selects, abstain elsewhere", from certified records.

    Same keys as :func:`abstain_metrics`; robust-accurate means cert_pred = y (robust selection
    already implies a radius of at least eps)."""
    df = by_index(check(df, CERTIFIED_COLUMNS, "certified records"))
    s = selection.aligned_to(df["index"].to_numpy())
    cert_ok = (df["cert_pred"] == df["label"]).to_numpy()
    wrong = ((df["cert_pred"] != df["label"]) & (df["cert_pred"] != ABSTAIN)).to_numpy()
    rs = s.robustly_selected
    return {"selected": float(s.selected.mean()),
            "nat_acc_on_sel": _ratio((s.selected & cert_ok).mean(), s.selected.mean()),
            "rob_sel": float(rs.mean()),
            "rob_acc_on_sel": _ratio((rs & cert_ok).mean(), rs.mean()),
            "rob_acc": float((rs & cert_ok).mean()),
            "rob_inacc": float((rs & wrong).mean())}


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


# ---------------------------------------------------------------------------------- specs
#: deployable selector kinds (:class:`SelectorSpec`)
KINDS = ("ERI", "SR")


@dataclass(frozen=True)
class SelectorSpec:
    """A deployable selector: ``kind`` "ERI" (robustness indicator of F_robust) or "SR" (softmax
    response at threshold ``tau``)."""

    kind: str
    tau: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ParamError(f"selector kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "SR" and (self.tau is None or not 0.0 <= self.tau <= 1.0):
            raise ParamError(f"softmax response needs tau in [0, 1], got {self.tau!r}")

    @property
    def name(self) -> str:
        return "ERI" if self.kind == "ERI" else f"SR@{self.tau:.2f}"

    def selection(self, records: pd.DataFrame) -> Selection:
        """This selector evaluated on ``records`` (selectors.py)."""
        return eri(records) if self.kind == "ERI" else softmax_response(records, float(self.tau))
