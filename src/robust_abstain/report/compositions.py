"""compositions.md and adaptive.md: every composition (12) of a robust model with the core, scored on
test with exact 95 % intervals; the headline composition and the best one chosen on validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..analysis.choose import Candidate, best_composition, composed_specs
from ..analysis.compose import Outcome, composition
from ..analysis.selectors import HEADLINE, SELECTORS, SelectorSpec
from ..analysis.stats import Interval, paired_diff_ci, rate_ci
from ..errors import DataError, ParamError
from . import tables
from .models import Context, ModelInfo, Rates, flat, measured

#: a composition's metric entries (``headline_composition/...``, ``best_composition/...``)
KEYS = ("nat_acc", "rob_acc", "rob_acc_sound", "rob_acc_rule", "rob_acc_adaptive", "d_nat_acc", "d_rob_acc")
#: an attacked composition's entries (``adaptive/<composition>/...``; values without intervals)
ADAPTIVE_KEYS = ("rob_acc_rule", "rob_acc_sound", "rob_acc_adaptive", "rob_acc")


@dataclass(frozen=True, eq=False)
class CompositionRow:
    """One composition (12) of ``model`` (selector ``spec``) with the core, scored on test: its
    ``outcome``, the rates with their exact 95 % intervals and the changes against the core with
    their paired ones. Other rates are read off the outcome."""

    model: ModelInfo
    spec: SelectorSpec
    outcome: Outcome
    nat_acc: Interval
    rob_acc: Interval
    d_nat_acc: Interval
    d_rob_acc: Interval

    name = property(lambda self: f"{self.model.name}+{self.spec.name}")
    selected = property(lambda self: self.outcome.selected)
    rob_sel = property(lambda self: self.outcome.rob_sel)
    rob_acc_sound = property(lambda self: self.outcome.rob_acc_sound)
    rob_acc_rule = property(lambda self: self.outcome.rob_acc_rule)
    rob_acc_adaptive = property(lambda self: self.outcome.rob_acc_adaptive)
    n_fooled = property(lambda self: self.outcome.n_fooled)
    n_overcounted = property(lambda self: self.outcome.n_overcounted)
    gap = property(lambda self: self.rob_acc_rule - self.rob_acc.value)

    def frame_row(self) -> dict[str, Any]:
        """The row of Figure 4's frame."""
        return {**self.model.info, "name": self.name, "model": self.model.name,
                "selector": SELECTORS[self.spec.kind].label, "threshold": self.spec.threshold,
                "tau": float("nan") if self.spec.tau is None else self.spec.tau,
                **flat(self, ("nat_acc", "rob_acc"))}


def adaptive_rows(adaptive: pd.DataFrame | None, model: str, spec: SelectorSpec) -> pd.DataFrame | None:
    """The rows of ``spec`` in a model's adaptive records (None without them)."""
    if adaptive is None:
        return None
    if "selector" not in adaptive.columns:
        raise DataError(f"adaptive records of {model} lack the 'selector' column")
    d = adaptive[adaptive["selector"] == spec.name]
    if not len(d):
        raise DataError(f"adaptive records of {model} hold no rows for {spec.name} (they hold "
                        f"{sorted(set(adaptive['selector']))}): re-run the adaptive stage (dvc repro)")
    return d


def composition_row(m: ModelInfo, spec: SelectorSpec, core: ModelInfo, adaptive: pd.DataFrame | None,
                    seed: int) -> CompositionRow:
    o = composition(m.records, core.records, spec.selection(m.records), adaptive_rows(adaptive, m.name, spec))
    return CompositionRow(m, spec, o, rate_ci(o.h_correct), rate_ci(o.headline),
                          paired_diff_ci(o.h_correct, o.core_correct, seed=seed),
                          paired_diff_ci(o.headline, o.core_robust, seed=seed))


def composition_rows(models: Sequence[ModelInfo], core: ModelInfo, adaptive: dict[str, pd.DataFrame],
                     taus: np.ndarray, max_nat_drop: float, seed: int) -> list[CompositionRow]:
    """Every robust model with validation records composed with every selector chosen for it on
    validation (choose.composed_specs), scored on test."""
    if core.val_records is None:
        raise DataError("the core model has no validation records: compositions are chosen on them")
    composed = [(m, s) for m in models if m.role != "core" and m.val_records is not None
                for s in composed_specs(m.val_records, core.val_records, taus, max_nat_drop)]
    unknown = sorted(set(adaptive) - {m.name for m, _ in composed})
    if composed and unknown:
        raise ParamError(f"adaptive records name no composed model: {unknown}")
    return [composition_row(m, s, core, adaptive.get(m.name), seed) for m, s in composed]


def best_row(rows: Sequence[CompositionRow], core: ModelInfo,
             max_nat_drop: float) -> tuple[CompositionRow, bool]:
    """The composition chosen on validation (choose.best_composition) and whether it is feasible."""
    cands = [Candidate(r.name, r.model.val_records, r.spec.selection(r.model.val_records)) for r in rows]
    best = best_composition(cands, core.val_records, max_nat_drop)
    return next(r for r in rows if r.name == best.name), best.feasible


def headline_row(rows: Sequence[CompositionRow], headline: ModelInfo | None) -> CompositionRow | None:
    """The paper's Table 1 composition: the headline model with the headline selector."""
    if headline is None:
        return None
    return next((r for r in rows if r.model.name == headline.name and r.spec.kind == HEADLINE), None)


def composition_metrics(rows: Sequence[CompositionRow], best: CompositionRow, feasible: bool,
                        headline: CompositionRow | None) -> dict[str, Any]:
    """``headline_composition/...``, ``best_composition/...`` (with ``feasible``)."""
    out = {} if headline is None else measured(flat(headline, KEYS, "headline_composition"))
    return {**out, **measured(flat(best, KEYS, "best_composition")), "best_composition/feasible": feasible}


def attacked(rows: Sequence[CompositionRow]) -> list[CompositionRow]:
    """The compositions the adaptive attack ran on."""
    return [r for r in rows if r.outcome.fooled is not None]


def adaptive_metrics(rows: Sequence[CompositionRow]) -> dict[str, Any]:
    """``adaptive/<composition>/...`` of every attacked composition."""
    out: dict[str, Any] = {}
    for r in attacked(rows):
        out.update(flat(r, ADAPTIVE_KEYS, f"adaptive/{r.name}", bounds=False))
    return out


# ---------------------------------------------------------------------------------- pages
def compositions_md(rows: Sequence[CompositionRow], core_rates: Rates, core: ModelInfo, best: CompositionRow,
                    feasible: bool, headline: CompositionRow | None, cascades: str, ctx: Context,
                    max_nat_drop: float) -> str:
    """compositions.md: the core against the headline and the best composition (Table 1/5 analog),
    every composition, and the cascades' section ``cascades``."""
    hl = [(f"{core.name} (core)", core_rates.rob_acc, None, core_rates.nat_acc, None)]
    if headline is not None:
        hl.append((f"{headline.name} (headline)", headline.rob_acc, headline.d_rob_acc,
                   headline.nat_acc, headline.d_nat_acc))
    hl.append((f"{best.name} (best on val{'' if feasible else ', infeasible'})", best.rob_acc,
               best.d_rob_acc, best.nat_acc, best.d_nat_acc))
    return ("# Compositions with the core model (12)\n\n" + ctx.head
            + "R_rob^acc (headline) is the **sound** score (H(x) = y and H robust on B_ε(x): robustly "
              "selected and the robust model robust-accurate at ε, or both models robust-accurate "
              "at ε) AND the end-to-end adaptive attack on H did not fool H: the lowest of the "
              "evidence. The paper's rule is kept as a labelled comparison column. Intervals: exact "
              "95 % (rates), paired bootstrap 95 % over test points (Δ against the core).\n\n"
            + f"Chosen on **validation** records (training split), reported on test: each SR τ "
              f"(best sound R_rob^acc losing at most {100 * max_nat_drop:g} points of R_nat against "
              "the core, `report.max_nat_drop`), the best composition (same criterion over all "
              "rows below), the cascade.\n\n"
            + "## Core vs compositions (Table 1/5 analog)\n\n" + tables.headline_table(ctx.eps, hl)
            + "\n## Every composition: S_ERI, and S_SR at the τ chosen on validation\n\n"
            + tables.compositions_table(rows) + cascades)


def adaptive_md(rows: Sequence[CompositionRow], ctx: Context) -> str:
    """adaptive.md: rule vs sound vs adaptive attack on every attacked composition."""
    return ("# Paper's rule vs sound score vs adaptive attack on H\n\n" + ctx.head
            + "Every composition of the reports (S_ERI and S_SR at the τ chosen on "
              "validation) attacked end to end (robust_abstain.adaptive: both branches, the "
              "selector's own attack at the point found). Adaptive: the rule's point, H(x) = y "
              "and the attack found no x' in B_ε(x) with H(x') ≠ y. Headline: sound and not "
              "fooled (the lowest).\n\n" + tables.adaptive_table(attacked(rows)))
