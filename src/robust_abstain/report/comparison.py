"""comparison.md and figures/comparison.png: every way of combining the accurate core with a robust
model on one plane (natural accuracy against robust accuracy at eps), each method's point chosen on
**validation** records and scored on test:

* the paper's composition (12) with S_ERI (the reference every other method is compared with), and
  with S_SR; the best of each over every robust model (choose.best_composition); and the best
  composition (S_ERI or S_SR) of the robust model the baselines use (``baselines.robust``), the
  like-for-like reference of the baselines, which combine that one model with the core;
* the greedy cascade of compositions (choose.best_cascade; sound score, no adaptive attack);
* a learned selection network S_NET (ACE-style) composed with the core at its validation tau;
* training-free mixing of the two models' probabilities, linear and MixedNUTS's nonlinear one, at
  the mixing weight chosen on validation (choose.best_model);
* the core and the robust models on their own.

A composition counts a point by its headline score (sound, and not fooled by the end-to-end
adaptive attack where one ran); a mixed model is itself attacked end to end (APGD-CE through the
mixture), so its records' robustness is the attack's verdict. Differences against the core and
against the paper's composition are paired (same test points, paired bootstrap)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..analysis.choose import Candidate, best_composition, best_model, composed_specs
from ..analysis.compose import Outcome, composition
from ..analysis.records import accurate, by_index, robust
from ..analysis.selectors import SelectorSpec
from ..analysis.stats import Interval, paired_diff_ci, rate_ci
from ..errors import DataError
from . import tables
from .compositions import CompositionRow, adaptive_rows
from .models import ModelInfo

#: the family every other one is compared with
REFERENCE = "composition, S_ERI"
#: the baselines' like-for-like reference: the best composition of their robust model
SAME_MODEL = "composition, baselines' robust model"
SR_COMPOSITION, CASCADE, NET = "composition, S_SR", "cascade of compositions", "selection network S_NET"
MIXINGS = {"linear": "linear mixing", "nuts": "MixedNUTS mixing"}
#: every family that gets metrics (comparison/<family_key>/...)
FAMILIES = (REFERENCE, SR_COMPOSITION, SAME_MODEL, CASCADE, NET, *MIXINGS.values())


def family_key(family: str) -> str:
    """A family's name in metric keys: ``comparison/<family_key>/...``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", family).strip("_")


@dataclass(frozen=True, eq=False)
class Method:
    """One method's point chosen on validation, as per-test-point outcomes at the test points
    ``index`` (sorted): ``correct`` (its answer at x is right) and ``robust`` (right and robust on B_eps(x) by the
    method's evidence, ``evidence``); ``front``: (label, R_nat, R_rob^acc) of every setting it was
    chosen from, on test, for the figure; ``baseline``: it combines ``baselines.robust`` with the core
    (compared with :data:`SAME_MODEL` too)."""

    family: str
    label: str
    evidence: str
    index: np.ndarray
    correct: np.ndarray
    robust: np.ndarray
    front: list[tuple[str, float, float]] = field(default_factory=list)
    standalone: bool = False
    baseline: bool = False

    @property
    def nat_acc(self) -> Interval:
        return rate_ci(self.correct)

    @property
    def rob_acc(self) -> Interval:
        return rate_ci(self.robust)


def _outcome_method(family: str, label: str, o: Outcome, front: list[tuple[str, float, float]],
                    baseline: bool = False) -> Method:
    evidence = "sound + adaptive attack on H" if o.fooled is not None else "sound (records), no adaptive attack"
    return Method(family, label, evidence, o.index, o.h_correct, o.headline, front, baseline=baseline)


def model_method(m: ModelInfo, family: str) -> Method:
    """A model on its own (the core, a robust model): its APGD records."""
    d = by_index(m.records, m.name)
    ok = accurate(d)
    return Method(family, m.name, "attack list (records)", d["index"].to_numpy(), ok, ok & robust(d, 1),
                  standalone=True)


def composition_methods(rows: Sequence[CompositionRow], core: ModelInfo, max_nat_drop: float,
                        same_model: str | None = None) -> list[Method]:
    """The best composition with S_ERI and with S_SR over every robust model, and (``same_model``) the
    best composition of that robust model with either selector, each chosen on validation."""
    out = []
    for family, rs in ((REFERENCE, [r for r in rows if r.spec.kind == "ERI"]),
                       (SR_COMPOSITION, [r for r in rows if r.spec.kind == "SR"]),
                       (SAME_MODEL, [r for r in rows if r.model.name == same_model])):
        if not rs:
            continue
        cands = [Candidate(r.name, r.model.val_records, r.spec.selection(r.model.val_records)) for r in rs]
        best = next(r for r in rs if r.name == best_composition(cands, core.val_records, max_nat_drop).name)
        front = [(r.name, r.nat_acc.value, r.rob_acc.value) for r in rs]
        out.append(_outcome_method(family, best.name, best.outcome, front))
    return out


def net_method(test: pd.DataFrame, val: pd.DataFrame, adaptive: pd.DataFrame, core: ModelInfo,
               taus: np.ndarray, max_nat_drop: float, robust_name: str) -> Method:
    """S_NET composed with the core at the tau chosen on validation (as the selection_net stage
    chose it for its adaptive attack); the front: every tau of the grid, sound score."""
    (spec,) = [s for s in composed_specs(val, core.val_records, taus, max_nat_drop) if s.kind == "NET"]
    o = composition(test, core.records, spec.selection(test), adaptive_rows(adaptive, "selection net", spec))
    front = []
    for t in taus:
        ot = composition(test, core.records, SelectorSpec("NET", float(t)).selection(test))
        front.append((f"NET@{t:.2f}", ot.nat_acc, ot.rob_acc))
    return _outcome_method(NET, f"{robust_name}+{spec.name}", o, front, baseline=True)


def mixing_methods(test: pd.DataFrame, val: pd.DataFrame, core: ModelInfo, max_nat_drop: float,
                   robust_name: str) -> list[Method]:
    """Each mixing method (column ``method``) at the mixing weight ``alpha`` chosen on validation;
    the front: every alpha, on test."""
    out = []
    for method, vg in val.groupby("method", sort=False):
        tg = {float(a): by_index(d.drop(columns=["method", "alpha"]), f"{method} records")
              for a, d in test[test["method"] == method].groupby("alpha")}
        cands = [(repr(float(a)), d.drop(columns=["method", "alpha"])) for a, d in vg.groupby("alpha")]
        chosen = float(best_model(cands, core.val_records, max_nat_drop)[0])
        if chosen not in tg:
            raise DataError(f"mixing records: {method} at alpha {chosen!r} has validation records but no test "
                            f"records; re-run the mixing stage (dvc repro)")
        front = []
        for a, d in tg.items():
            ok = accurate(d)
            front.append((f"{method}@{a:g}", float(ok.mean()), float((ok & robust(d, 1)).mean())))
        d = tg[chosen]
        ok = accurate(d)
        out.append(Method(MIXINGS.get(method, method), f"{robust_name} {method}@α={chosen:.4g}",
                          "attack list end to end through the mixture", d["index"].to_numpy(), ok,
                          ok & robust(d, 1), front, baseline=True))
    return out


@dataclass(frozen=True)
class ComparisonRow:
    method: Method
    d_nat_core: Interval
    d_rob_core: Interval
    d_nat_ref: Interval | None
    d_rob_ref: Interval | None
    d_nat_same: Interval | None = None     # a baseline against the best composition of its robust model
    d_rob_same: Interval | None = None


def comparison_rows(methods: Sequence[Method], core: Method, seed: int) -> list[ComparisonRow]:
    """Each method with its paired differences against the core and the S_ERI composition, and each
    baseline against the best composition of its own robust model (the methods must hold the same
    test points)."""
    for m in methods:
        if not np.array_equal(m.index, core.index):
            raise DataError(f"comparison: {m.family} ({m.label}) covers other test points than the core")
    ref = next((m for m in methods if m.family == REFERENCE), None)
    same = next((m for m in methods if m.family == SAME_MODEL), None)

    def vs(m: Method, r: Method) -> tuple[Interval, Interval]:
        return paired_diff_ci(m.correct, r.correct, seed=seed), paired_diff_ci(m.robust, r.robust, seed=seed)

    none = (None, None)
    return [ComparisonRow(m, *vs(m, core), *(vs(m, ref) if ref is not None and m is not ref else none),
                          *(vs(m, same) if same is not None and m.baseline else none)) for m in methods]


def _verdict(d: Interval | None) -> str:
    if d is None:
        return tables.DASH
    return "higher" if d.lo > 0 else "lower" if d.hi < 0 else "no clear difference"


def versus(d_rob: Interval, d_nat: Interval) -> str:
    """'R_rob^acc higher (+1.4 [+0.2, +2.5]), R_nat no clear difference (...)': paired differences in words."""
    return (f"R_rob^acc {_verdict(d_rob)} ({tables.dci(*d_rob.as_tuple())}), R_nat {_verdict(d_nat)} "
            f"({tables.dci(*d_nat.as_tuple())})")


def comparison_md(rows: Sequence[ComparisonRow], eps: float, n: int, max_nat_drop: float) -> str:
    head = ["method", "point (chosen on validation)", "R_nat", "R_rob^acc", "Δ R_nat vs core",
            "Δ R_rob^acc vs core", "Δ R_nat vs S_ERI comp.", "Δ R_rob^acc vs S_ERI comp.", "robustness evidence"]
    body = []
    for r in rows:
        m = r.method
        body.append([m.family, m.label, tables.ci(*m.nat_acc.as_tuple()), tables.ci(*m.rob_acc.as_tuple()),
                     tables.dci(*r.d_nat_core.as_tuple()), tables.dci(*r.d_rob_core.as_tuple()),
                     tables.dci(*r.d_nat_ref.as_tuple()) if r.d_nat_ref else tables.DASH,
                     tables.dci(*r.d_rob_ref.as_tuple()) if r.d_rob_ref else tables.DASH, m.evidence])
    same = next((r.method.label for r in rows if r.method.family == SAME_MODEL), None)
    lines = [f"- **{r.method.family}** against the S_ERI composition: {versus(r.d_rob_ref, r.d_nat_ref)}"
             + (f"; against {same}, the best composition of the same robust model: "
                f"{versus(r.d_rob_same, r.d_nat_same)}" if r.d_rob_same is not None else "")
             + ("; its robust accuracy has no adaptive attack behind it." if "no adaptive" in r.method.evidence
                else ".") for r in rows if r.d_rob_ref is not None and not r.method.standalone]
    return ("# Every way of combining the core with a robust model, on one plane\n\n"
            f"Threat model: ε = {eps:g}; {n} test points. Numbers in percent, [95 % interval]; Δ: paired "
            "bootstrap 95 % interval over the same test points.\n\n"
            "Each method's point is chosen on **validation** records (training split) by one criterion: "
            f"the highest robust accuracy among settings losing at most {100 * max_nat_drop:g} "
            f"point{'' if max_nat_drop == 0.01 else 's'} of "
            "natural accuracy against the core (the highest robust accuracy overall if none does); the "
            "compositions over every robust model and threshold, the selection network over its threshold, "
            "each mixing over its weight α. R_rob^acc counts a point only if the method's answer is right "
            "and robust on B_ε(x): for a composition the sound score and the end-to-end adaptive attack on H "
            "(cascades: sound score only); for a mixture the attack list run end to end through the "
            "mixture; for a model on its own its records.\n\n"
            + tables.markdown(head, body, align="llrrrrrrl") + "\n" + "\n".join(lines) + "\n")


def comparison_metrics(rows: Sequence[ComparisonRow]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        if r.method.standalone:
            continue
        key = "comparison/" + family_key(r.method.family)
        out[f"{key}/nat_acc"], out[f"{key}/rob_acc"] = r.method.nat_acc.value, r.method.rob_acc.value
        for name, d in (("d_nat_acc", r.d_nat_core), ("d_rob_acc", r.d_rob_core),
                        ("d_nat_acc_vs_eri", r.d_nat_ref), ("d_rob_acc_vs_eri", r.d_rob_ref),
                        ("d_nat_acc_vs_same", r.d_nat_same), ("d_rob_acc_vs_same", r.d_rob_same)):
            if d is not None:
                out[f"{key}/{name}"], out[f"{key}/{name}_lo"], out[f"{key}/{name}_hi"] = d.as_tuple()
    return out


@dataclass(frozen=True, eq=False)
class Baselines:
    """The baselines' records: ``robust`` names the robust model they combine with the core; the
    selection network's test, validation and adaptive records (stage selection_net); the mixings'
    test and validation records, one block per (``method``, ``alpha``) (stage mixing)."""

    robust: str
    net: pd.DataFrame
    net_val: pd.DataFrame
    net_adaptive: pd.DataFrame
    mixing: pd.DataFrame
    mixing_val: pd.DataFrame


def comparison_methods(models: Sequence[ModelInfo], core: ModelInfo, rows: Sequence[CompositionRow],
                       cascade_chain: tuple[str, Outcome] | None, baselines: Baselines, taus: np.ndarray,
                       max_nat_drop: float) -> list[Method]:
    """Every method of the module docstring, the core first, then the robust models on their own."""
    out = [model_method(core, "core")]
    out += [model_method(m, "robust model") for m in models if m.role != "core"]
    out += composition_methods(rows, core, max_nat_drop, baselines.robust)
    if cascade_chain is not None:
        name, o = cascade_chain
        out.append(_outcome_method(CASCADE, name, o, []))
    out.append(net_method(baselines.net, baselines.net_val, baselines.net_adaptive, core, taus, max_nat_drop,
                          baselines.robust))
    out += mixing_methods(baselines.mixing, baselines.mixing_val, core, max_nat_drop, baselines.robust)
    return out


def comparison_frames(methods: Sequence[Method]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The figure's frames: each method's chosen point with its intervals, and the fronts."""
    points = pd.DataFrame([{"family": m.family, "label": m.label,
                            **{f"nat_acc{s}": v for s, v in zip(("", "_lo", "_hi"), m.nat_acc.as_tuple())},
                            **{f"rob_acc{s}": v for s, v in zip(("", "_lo", "_hi"), m.rob_acc.as_tuple())}}
                           for m in methods])
    fronts = pd.DataFrame([{"family": m.family, "label": lab, "nat_acc": nat, "rob_acc": rob}
                           for m in methods for lab, nat, rob in m.front],
                          columns=["family", "label", "nat_acc", "rob_acc"])
    return points, fronts
