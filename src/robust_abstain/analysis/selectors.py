"""Selectors S: X -> {0, 1} as boolean arrays over the test points, computed from records.

Each selector carries two per-point quantities:

``selected``
    S(x) at the clean point. It decides which model answers x in a composition (12), so it drives
    the composition's natural accuracy.
``robustly_selected``
    S(x') = 1 for **every** x' in B_eps(x). By Appendix A.3 a robustness indicator is itself robust
    at x only if F is robust on B_2eps(x) (every x' in B_eps(x) then has its whole B_eps(x') inside
    B_2eps(x)), so every ``robustly_selected`` below uses the 2 * eps evidence.

Selectors (the registry :data:`SELECTORS` holds them with their metadata):
    (10)/(14) S_ERI  empirical robustness indicator of F          :func:`eri`
    (11)      S_CRI  certified robustness indicator of smoothed G  :func:`cri` (rule "sound"/"paper")
    (13)      S_SR   softmax response at threshold tau            :func:`softmax_response`
    (ACE)     S_NET  a learned selection network at threshold tau :func:`selection_net`
                     (Mueller et al. 2021; trained by evaluation/selection_net.py)

Adding a selector: its function here, one :class:`SelectorKind` entry in :data:`SELECTORS`, a params
entry if it needs one, and a test. Abstain models of a selector are scored in abstain.py.

Example::

    >>> s = eri(records)                       # or SelectorSpec("SR", 0.9).selection(records)
    >>> s.selection_rate, s.robust_selection   # P[S(x) = 1], R_rob^sel
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import DataError, ParamError
from .records import (CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, by_index, certified_robust, check, robust,
                      worst_confidence)

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


# ---------------------------------------------------------------------------------- S_NET
NET_COLUMNS = ["net_score", "net_score_min"]


def has_selection_net(df: pd.DataFrame) -> bool:
    """True when the records hold a selection network's scores (the ``selection_net`` stage's
    records: F_robust's records plus :data:`NET_COLUMNS`)."""
    return all(c in df.columns for c in NET_COLUMNS)


def _net_evidence(df: pd.DataFrame) -> dict[str, np.ndarray]:
    df = by_index(check(df, EMPIRICAL_COLUMNS, "empirical records"))
    if not has_selection_net(df):
        raise DataError(f"records lack the selection network's columns {NET_COLUMNS}: use the "
                        f"selection_net stage's records to use S_NET")
    score, low = df["net_score"].to_numpy(float), df["net_score_min"].to_numpy(float)
    if not (np.isfinite(score).all() and np.isfinite(low).all()):
        raise DataError("records: net_score and net_score_min must be finite at every point")
    return {"index": df["index"].to_numpy(), "score": score, "score_min": low, "robust_2x": robust(df, 2)}


def _net_select(ev: dict[str, np.ndarray], tau: float) -> Selection:
    if not (0.0 <= float(tau) <= 1.0):
        raise ParamError(f"selection-network threshold tau must be in [0, 1], got {tau!r}")
    sel = ev["score"] >= tau
    rob = sel & (ev["score_min"] >= tau) & ev["robust_2x"]
    return Selection(f"NET@{tau:.2f}", ev["index"], sel, rob, {"tau": float(tau)})


def selection_net(df: pd.DataFrame, tau: float) -> Selection:
    """S_NET(x) = 1{sigmoid(s(x)) >= tau} for a learned selection network s (ACE, Mueller et al.
    2021), used as S in (12).

    selected(x)          = net_score >= tau (the network's score at x)
    robustly_selected(x) = net_score >= tau, the lowest score an attack on the network found in
                           B_eps(x) (``net_score_min``) stays >= tau, so its own decision holds on
                           B_eps(x), **and** F_robust is robust on B_2eps(x) (records.robust(df, 2):
                           the project's robust-selection rule, Appendix A.3).

    Example::

        >>> selection_net(net_records, 0.7).robust_selection       # R_rob^sel of S_NET at tau 0.7
    """
    return _net_select(_net_evidence(df), float(tau))


def selection_net_sweep(df: pd.DataFrame, taus: np.ndarray | None = None) -> list[Selection]:
    """S_NET at every tau of ``taus`` (default :data:`TAU_GRID`)."""
    taus = TAU_GRID if taus is None else np.asarray(taus, dtype=float)
    ev = _net_evidence(df)
    return [_net_select(ev, float(t)) for t in taus]


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


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class SelectorKind:
    """A selector of the paper and what the pipeline needs to know about it.

    ``label``: its name in tables, figures and selection names (``SR@0.90`` for a kind with a
    threshold); ``equation``: the paper's; ``certified``: computed from certified records of a
    smoothed model G (composed by :func:`compose.compose_certified`), else from empirical records of
    F (deployable: :class:`SelectorSpec`); ``threshold``: takes a threshold tau (swept over the
    report's grid, chosen on validation records); ``select``: the function computing it from
    records (and tau); ``available``: whether records hold the evidence it needs; ``sweep``: the
    selector at many thresholds at once (faster than ``select`` for each)."""

    label: str
    equation: str
    certified: bool
    threshold: bool
    select: Callable[..., Selection]
    available: Callable[[pd.DataFrame], bool] = lambda df: True
    sweep: Callable[[pd.DataFrame, np.ndarray], list[Selection]] | None = None


#: every selector, in the order the reports list them
SELECTORS: dict[str, SelectorKind] = {
    "ERI": SelectorKind("ERI", "(10)/(14)", certified=False, threshold=False, select=eri),
    "SR": SelectorKind("SR", "(13)", certified=False, threshold=True, select=softmax_response,
                       available=has_softmax_response, sweep=softmax_response_sweep),
    "NET": SelectorKind("NET", "(ACE)", certified=False, threshold=True, select=selection_net,
                        available=has_selection_net, sweep=selection_net_sweep),
    "CRI": SelectorKind("CRI", "(11)", certified=True, threshold=False, select=cri),
}
#: the selector of the paper's headline composition (Table 1), the one others are matched against
HEADLINE = "ERI"


@dataclass(frozen=True)
class SelectorSpec:
    """A deployable selector: an empirical kind of :data:`SELECTORS`, with its threshold ``tau`` if
    the kind takes one.

    Example::

        >>> SelectorSpec("SR", 0.9).name
        'SR@0.90'
        >>> SelectorSpec("ERI").selection(records).robust_selection        # R_rob^sel
    """

    kind: str
    tau: float | None = None

    def __post_init__(self) -> None:
        deployable = [k for k, s in SELECTORS.items() if not s.certified]
        if self.kind not in deployable:
            raise ParamError(f"selector kind must be one of {deployable}, got {self.kind!r}")
        if self.threshold and (self.tau is None or not 0.0 <= self.tau <= 1.0):
            raise ParamError(f"{self.kind} needs a threshold tau in [0, 1], got {self.tau!r}")
        if not self.threshold and self.tau is not None:
            raise ParamError(f"{self.kind} takes no threshold, got tau = {self.tau!r}")

    @property
    def threshold(self) -> bool:
        return SELECTORS[self.kind].threshold

    @property
    def name(self) -> str:
        label = SELECTORS[self.kind].label
        return f"{label}@{self.tau:.2f}" if self.threshold else label

    def selection(self, records: pd.DataFrame) -> Selection:
        """This selector evaluated on ``records``."""
        select = SELECTORS[self.kind].select
        return select(records, float(self.tau)) if self.threshold else select(records)


def selector_grid(records: pd.DataFrame, taus: np.ndarray) -> list[SelectorSpec]:
    """Every deployable selector for ``records``: kinds with a threshold at every tau of ``taus``,
    where the records hold their evidence."""
    out = []
    for kind, s in SELECTORS.items():
        if s.certified or not s.available(records):
            continue
        out += [SelectorSpec(kind, float(t)) for t in taus] if s.threshold else [SelectorSpec(kind)]
    return out


def selections(specs: list[SelectorSpec], records: pd.DataFrame) -> list[Selection]:
    """``specs`` evaluated on ``records``, in order (a kind's thresholds in one sweep)."""
    out: list[Selection | None] = [None] * len(specs)
    for kind, s in SELECTORS.items():
        at = [i for i, spec in enumerate(specs) if spec.kind == kind]
        if s.sweep is not None and at:
            sels = s.sweep(records, np.array([specs[i].tau for i in at], dtype=float))
        else:
            sels = [specs[i].selection(records) for i in at]
        for i, sel in zip(at, sels):
            out[i] = sel
    return out
