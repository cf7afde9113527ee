"""Choices made on **validation** records (points from the training split), never on test records.

Every knob the reports turn (a selector's threshold tau, the best composition, the cascade, the tau
whose R_rob^sel matches S_ERI's) is chosen here from validation records; the caller then scores the
chosen configuration on test records. The adaptive stage and the report call the same functions with
the same params (:class:`ReportParams`), so they agree on what was chosen.

Criterion of "best" (:func:`best_composition`): the highest sound R_rob^acc among compositions
losing at most ``max_nat_drop`` natural accuracy against the core (on validation); ties by natural
accuracy, then the earlier candidate.

Example::

    >>> specs = composed_specs(val_robust, val_core, tau_grid(34), max_nat_drop=0.01)
    >>> [s.name for s in specs]                  # e.g. ['ERI', 'SR@0.81']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ParamError
from ..params import Section, count, number, probability
from .abstain import pareto_front
from .compose import RULES, ModelArrays, Outcome, chain, check_same_points, model_arrays
from .selectors import HEADLINE, SELECTORS, Selection, SelectorSpec, selections


@dataclass(frozen=True)
class ReportParams(Section):
    """The ``report`` params section: ``n_taus`` (how many thresholds the tau grid has, see
    :func:`tau_grid`), ``max_nat_drop`` (the natural accuracy a composition may lose against the
    core, on validation, to count as best), ``warn_nat_drop`` (claims.md warns of a fine-tune losing
    more validation accuracy against its base), ``seed`` (of the paired bootstrap intervals)."""

    n_taus: int
    max_nat_drop: float
    warn_nat_drop: float
    seed: int

    def validate(self, prefix: str) -> None:
        checked = {"n_taus": number(self.n_taus, f"{prefix}.n_taus", min=2, max=100, integer=True),
                   "max_nat_drop": probability(self.max_nat_drop, f"{prefix}.max_nat_drop"),
                   "warn_nat_drop": probability(self.warn_nat_drop, f"{prefix}.warn_nat_drop"),
                   "seed": count(self.seed, f"{prefix}.seed", min=0)}
        for key, value in checked.items():     # keep the validated value: an int count, a float rate
            object.__setattr__(self, key, value)

    @property
    def tau_grid(self) -> np.ndarray:
        return tau_grid(self.n_taus)


def tau_grid(n_taus: int) -> np.ndarray:
    """``n_taus`` thresholds evenly spaced in [0, 0.99], rounded to 4 decimals."""
    if not 2 <= n_taus <= 100:
        raise ParamError(f"the tau grid needs 2 to 100 thresholds (selectors are named SR@0.xx), "
                         f"got {n_taus}")
    return np.round(np.linspace(0.0, 0.99, n_taus), 4)


# ---------------------------------------------------------------------------------- thresholds
def composed_specs(val_robust: pd.DataFrame, val_core: pd.DataFrame, taus: Sequence[float],
                   max_nat_drop: float) -> list[SelectorSpec]:
    """The selectors a robust model is composed with: every deployable kind of SELECTORS, a kind
    with a threshold at the tau of its best composition on validation (left out where the records
    hold no evidence for it)."""
    out = []
    for kind, s in SELECTORS.items():
        if s.certified:
            continue
        if not s.threshold:
            out.append(SelectorSpec(kind))
        elif s.available(val_robust):
            specs = [SelectorSpec(kind, float(t)) for t in np.asarray(taus, dtype=float)]
            sels = selections(specs, val_robust)
            cands = [Candidate(c.name, val_robust, sel) for c, sel in zip(specs, sels)]
            best = best_composition(cands, val_core, max_nat_drop)
            out.append(specs[cands.index(best.candidate)])
    return out


def sr_tau(val_robust: pd.DataFrame, val_core: pd.DataFrame, taus: Sequence[float],
           max_nat_drop: float) -> float | None:
    """The tau of S_SR in :func:`composed_specs`; None when the records hold no APGD-conf evidence."""
    sr = [s for s in composed_specs(val_robust, val_core, taus, max_nat_drop) if s.kind == "SR"]
    return sr[0].tau if sr else None


def matched_tau(val_robust: pd.DataFrame, taus: Sequence[float], kind: str = "SR") -> float | None:
    """The tau >= 1/2 whose robust selection R_rob^sel (selector ``kind``) is closest to the
    headline selector's (S_ERI), on validation (the abstain table's "matched" comparison); None
    without the kind's evidence or such a tau. Below 1/2, S_SR's robust selection is a subset of
    S_ERI's by construction (selectors.py)."""
    taus = np.asarray(taus, dtype=float)
    taus = taus[taus >= 0.5]
    if not SELECTORS[kind].available(val_robust) or not len(taus):
        return None
    target = SelectorSpec(HEADLINE).selection(val_robust).robust_selection
    specs = [SelectorSpec(kind, float(t)) for t in taus]
    gaps = [abs(s.robust_selection - target) for s in selections(specs, val_robust)]
    return specs[int(np.argmin(gaps))].tau


# ---------------------------------------------------------------------------------- compositions
@dataclass(frozen=True, eq=False)
class Candidate:
    """A robust model (its empirical records) with the selector that routes points to it;
    ``model`` names the model (default: ``name``): a cascade uses each model once."""

    name: str
    records: pd.DataFrame
    selection: Selection
    model: str | None = None


@dataclass(frozen=True, eq=False)
class Choice:
    """The best 2-composition: ``candidate`` (and its ``name``), its ``outcome`` on the records it
    was chosen on, and whether it met the ``max_nat_drop`` constraint (``feasible``)."""

    name: str
    candidate: Candidate
    outcome: Outcome
    feasible: bool


@dataclass(frozen=True, eq=False)
class CascadeChoice:
    """The greedy cascade: ``chain`` (candidate names, first to last), its ``outcome``, the
    ``best_single`` 2-composition it is compared with, ``feasible``, ``beats_single``, ``gain``
    (robust-accuracy gain over the best single, by ``rule``), ``rule``, ``front`` (names)."""

    chain: list[str]
    outcome: Outcome
    best_single: Choice
    feasible: bool
    beats_single: bool
    gain: float
    rule: str
    front: list[str]


def _rob_acc(rule: str) -> str:
    """The :class:`Outcome` rate of ``rule`` (without adaptive evidence the headline is sound)."""
    if rule not in RULES:
        raise ParamError(f"rule must be one of {list(RULES)}, got {rule!r}")
    return "rob_acc" if rule == "sound" else "rob_acc_rule"


def _score(o: Outcome, key: str, max_nat_drop: float | None) -> tuple:
    return _rank(getattr(o, key), o.nat_acc, o.core_nat_acc, max_nat_drop)


def _rank(rob_acc: float, nat_acc: float, core_nat_acc: float, max_nat_drop: float | None) -> tuple:
    """The criterion of "best": feasible (losing at most ``max_nat_drop`` natural accuracy against
    the core) first, then robust accuracy, then natural accuracy."""
    feasible = max_nat_drop is None or nat_acc >= core_nat_acc - max_nat_drop - 1e-12
    return (bool(feasible), round(rob_acc, 12), round(nat_acc, 12))


class _Search:
    """The candidates' arrays and aligned selections, computed once per search."""

    def __init__(self, candidates: Sequence[Candidate], core_df: pd.DataFrame):
        self.core = model_arrays(core_df, "core records")
        by_id: dict[int, ModelArrays] = {}
        self.models, self.sels = [], []
        for c in candidates:
            if id(c.records) not in by_id:
                by_id[id(c.records)] = model_arrays(c.records, f"records of {c.name}")
                check_same_points([by_id[id(c.records)]], [f"records of {c.name}"], self.core)
            self.models.append(by_id[id(c.records)])
            self.sels.append(c.selection.aligned_to(self.core.index))

    def abstain(self, i: int) -> tuple[float, float]:
        """(R_rob^sel, robust accuracy on selected) of candidate i's abstain model."""
        rs = self.sels[i].robustly_selected
        sel = float(rs.mean())
        return sel, (float((rs & self.models[i].robust_correct).mean()) / sel if sel > 0 else float("nan"))

    def outcome(self, order: Sequence[int]) -> Outcome:
        return chain([self.models[i] for i in order], [self.sels[i] for i in order], self.core)

    def best_single(self, key: str, max_nat_drop: float | None) -> tuple[tuple, int, Outcome]:
        best = None
        for i in range(len(self.models)):
            o = self.outcome([i])
            s = _score(o, key, max_nat_drop)
            if best is None or s > best[0]:
                best = (s, i, o)
        return best


def best_composition(candidates: Sequence[Candidate], core_df: pd.DataFrame,
                     max_nat_drop: float | None = 0.01, rule: str = "sound") -> Choice:
    """The 2-composition (12) with the highest robust accuracy (by ``rule``) among those losing at
    most ``max_nat_drop`` natural accuracy against the core (None: no constraint); if none meets
    the constraint, the best overall, with ``feasible = False``. Ties: higher natural accuracy,
    then the earlier candidate."""
    if not candidates:
        raise ParamError("best_composition needs at least one candidate")
    s, i, o = _Search(candidates, core_df).best_single(_rob_acc(rule), max_nat_drop)
    return Choice(candidates[i].name, candidates[i], o, s[0])


def best_cascade(candidates: Sequence[Candidate], core_df: pd.DataFrame,
                 max_nat_drop: float | None = 0.01, rule: str = "sound",
                 max_length: int = 4) -> CascadeChoice:
    """Greedy cascade search along the Pareto front, compared with the best 2-composition.

    1. The front: candidates whose abstain model is Pareto-optimal in (R_rob^sel, robust accuracy
       on selected) (Figure 3), e.g. the beta sweep's ERI selectors and SR thresholds.
    2. Start from the best single 2-composition over **all** candidates (:func:`best_composition`).
    3. Repeatedly insert the front candidate (of a model not yet in the chain) at the position that
       most improves the score (feasible under ``max_nat_drop``, then robust accuracy by ``rule``,
       then natural accuracy); stop when nothing improves or the chain has ``max_length`` models."""
    if not candidates:
        raise ParamError("best_cascade needs at least one candidate")
    key = _rob_acc(rule)
    if max_length < 1:
        raise ParamError(f"max_length must be >= 1, got {max_length}")
    search = _Search(candidates, core_df)
    score, i0, single = search.best_single(key, max_nat_drop)
    best_single = Choice(candidates[i0].name, candidates[i0], single, score[0])
    front = pareto_front([search.abstain(i) for i in range(len(candidates))])
    model_of = [c.model or c.name for c in candidates]
    order, outcome = [i0], single
    while len(order) < max_length:
        used = {model_of[i] for i in order}
        best = None
        for j in front:
            if model_of[j] in used:
                continue
            for pos in range(len(order) + 1):
                trial = order[:pos] + [j] + order[pos:]
                o = search.outcome(trial)
                s = _score(o, key, max_nat_drop)
                if best is None or s > best[0]:
                    best = (s, trial, o)
        if best is None or not best[0] > score:
            break
        score, order, outcome = best
    gain = getattr(outcome, key) - getattr(single, key)
    return CascadeChoice([candidates[i].name for i in order], outcome, best_single, score[0],
                         bool(len(order) > 1 and gain > 1e-12), float(gain), rule,
                         [candidates[i].name for i in front])


# ---------------------------------------------------------------------------------- single models
def best_model(candidates: Sequence[tuple[str, pd.DataFrame]], core_df: pd.DataFrame,
               max_nat_drop: float | None = 0.01) -> tuple[str, bool]:
    """Among models that answer on their own (a mixture of the core and a robust model at one
    setting, say), the one with the highest R_rob^acc at eps (records.robust: every attack run)
    among those losing at most ``max_nat_drop`` natural accuracy against the core, by the same
    criterion and ties as :func:`best_composition`; returns (name, feasible). ``candidates``:
    (name, validation records) pairs on the core's validation points."""
    if not candidates:
        raise ParamError("best_model needs at least one candidate")
    core = model_arrays(core_df, "core records")
    best = None
    for name, df in candidates:
        m = model_arrays(df, f"records of {name}")
        check_same_points([m], [f"records of {name}"], core)
        score = _rank(float(m.robust_correct.mean()), float(m.correct.mean()), float(core.correct.mean()),
                      max_nat_drop)
        if best is None or score > best[0]:
            best = (score, name)
    return best[1], best[0][0]
