"""summary.md and splits.md: metrics (1)/(2) of every model with exact 95 % intervals, fine-tunes
against the baseline at matched robust accuracy (paired), the headline run's seed spread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from ..analysis.compose import composition
from ..analysis.metrics import model_masks
from ..analysis.selectors import HEADLINE, SelectorSpec
from ..analysis.stats import Interval, paired_diff_ci
from ..errors import ParamError
from ..losses import LOSSES
from . import tables
from .compositions import adaptive_rows
from .models import FINE_TUNED, RATES, Context, ModelInfo, Rates, flat, measured

#: the paper's Figure 2 baseline: every other adversarial fine-tune is matched to one of its fine-tunes
BASELINE = "trades"


NONROB = ("nonrob_acc", "nonrob_inacc", "nonrob_acc_2x", "nonrob_inacc_2x")


def model_metrics(models: Sequence[ModelInfo]) -> pd.DataFrame:
    """One row per model: name, loss, beta, role, the :class:`Rates` (with ``_lo``, ``_hi``) and
    the non-robust splits nonrob_acc, nonrob_inacc (and ``_2x``), as fractions."""
    rows = []
    for m in models:
        masks = model_masks(m.records)
        rows.append({**m.info, **flat(Rates.of(masks), RATES), **{k: float(masks[k].mean()) for k in NONROB}})
    return pd.DataFrame(rows)


def role_metrics(models: Sequence[ModelInfo]) -> dict[str, Any]:
    """``<role>/<rate>`` entries (:class:`Rates` with intervals) of the core, base and headline models."""
    out: dict[str, Any] = {}
    for role in ("core", "base", "headline"):
        for m in (m for m in models if m.role == role):
            out.update(flat(Rates.of(model_masks(m.records)), RATES, role))
    return out


# ---------------------------------------------------------------------------------- matched pairs
@dataclass(frozen=True)
class MatchedPair:
    """A fine-tune against the baseline fine-tune whose validation R_rob^acc is closest: paired test
    differences (this model minus the baseline) with 95 % paired-bootstrap intervals."""

    name: str
    match: str
    val_rob_acc: float
    val_rob_acc_match: float
    d_rob_acc_1x: Interval
    d_rob_inacc_1x: Interval
    d_rob_inacc_2x: Interval


DIFFS = {"d_rob_acc_1x": "rob_acc", "d_rob_inacc_1x": "rob_inacc", "d_rob_inacc_2x": "rob_inacc_2x"}


def _val_rob_acc(m: ModelInfo) -> float:
    return float(model_masks(m.val_records)["rob_acc"].mean())


def matched_pairs(models: Sequence[ModelInfo], seed: int) -> list[MatchedPair]:
    """Every fine-tuned model with an adversarial loss other than the baseline (roles sweep and
    headline: the same budget) against the baseline fine-tune whose validation R_rob^acc at eps is
    closest."""
    base = [m for m in models if m.loss == BASELINE and m.role in FINE_TUNED and m.val_records is not None]
    out = []
    for m in models:
        spec = LOSSES.get(m.loss)
        if m.role not in FINE_TUNED or m.loss == BASELINE or spec is None or spec.kind != "adversarial" \
                or m.val_records is None or not base:
            continue
        v = _val_rob_acc(m)
        t = min(base, key=lambda t: abs(_val_rob_acc(t) - v))
        a, b = model_masks(m.records), model_masks(t.records)
        out.append(MatchedPair(m.name, t.name, v, _val_rob_acc(t),
                               **{d: paired_diff_ci(a[k], b[k], seed=seed) for d, k in DIFFS.items()}))
    return out


# ---------------------------------------------------------------------------------- seeds
def seed_spread(runs: Sequence[ModelInfo], core: ModelInfo | None, seeds: Sequence[int],
                adaptive: Sequence[pd.DataFrame | None] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The headline run trained with each seed of ``seeds`` (``runs``, same order): its metrics (1)/(2)
    and, with a core, its headline composition (S_ERI; the headline score: sound and, with the
    seed's adaptive records in ``adaptive``, not fooled), one row per seed; and the ``seeds/...``
    entries: the number of seeds and, with two or more, the sample sd of each column."""
    rows = []
    adaptive = adaptive or [None] * len(runs)
    spec = SelectorSpec(HEADLINE)
    for seed, m, adv in zip(seeds, runs, adaptive):
        k = model_masks(m.records)
        row = {"seed": seed, "nat_acc": float(k["nat_acc"].mean()), "rob_acc_1x": float(k["rob_acc"].mean()),
               "rob_inacc_1x": float(k["rob_inacc"].mean()), "rob_inacc_2x": float(k["rob_inacc_2x"].mean())}
        if core is not None:
            adv = adaptive_rows(adv, m.name, spec)
            o = composition(m.records, core.records, spec.selection(m.records), adv)
            row["comp_nat_acc"], row["comp_rob_acc"] = o.nat_acc, o.rob_acc
        rows.append(row)
    df = pd.DataFrame(rows)
    metrics: dict[str, Any] = {"seeds/n": len(rows)}
    if len(rows) > 1:
        for c in df.columns.drop("seed"):
            metrics[f"seeds/{c}_sd"] = float(df[c].std(ddof=1))
    return df, metrics


# ---------------------------------------------------------------------------------- pages
def summary_md(models: Sequence[ModelInfo], mdf: pd.DataFrame, ctx: Context, core: ModelInfo | None,
               seed_runs: Sequence[ModelInfo] | None, seeds: Sequence[int] | None,
               seed_adaptive: Sequence[pd.DataFrame] | None) -> tuple[str, dict[str, Any]]:
    """summary.md and its entries: ``vs_<baseline>/<model>/...`` and ``seeds/...``."""
    text = "# Robust accuracy and robust inaccuracy\n\n" + ctx.head + tables.summary_table(mdf)
    metrics: dict[str, Any] = {}
    pairs = matched_pairs(models, ctx.seed)
    if pairs:
        label = LOSSES[BASELINE].label
        text += (f"\n## Against {label} at matched robust accuracy\n\nEach fine-tuned model against "
                 f"the {label} fine-tune (same budget) whose R_rob^acc at ε on **validation** is closest; "
                 f"Δ = this model minus {label} on test, paired bootstrap 95 % interval over test "
                 "points.\n\n" + tables.matched_table(pairs, label))
        for p in pairs:
            metrics.update(measured(flat(p, DIFFS, f"vs_{BASELINE}/{p.name}")))
    if seed_runs:
        if seeds is None or len(seeds) != len(seed_runs):
            raise ParamError(f"seed_runs need one training seed each, got {seeds!r}")
        sdf, smetrics = seed_spread(seed_runs, core, seeds, seed_adaptive)
        metrics.update(smetrics)
        text += ("\n## Seed spread of the headline run\n\nThe headline fine-tune trained with each "
                 "training seed of `seeds` (the first is the headline above; a seed also draws the "
                 "fine-tune's training subset, so the spread includes data-subset variance); "
                 "the composition is S_ERI with the core, headline score (sound, adaptive).\n\n"
                 + tables.seeds_table(sdf))
        if len(sdf) == 1:
            text += "\nOne seed: set `seeds: [0, 1, 2]` in params.yaml to measure the spread.\n"
    return text, metrics


def splits_md(mdf: pd.DataFrame, ctx: Context) -> str:
    """splits.md: Tables 7/8 analog."""
    return ("# Robust / accurate splits (Tables 7/8 analog)\n\n" + ctx.head
            + "The four columns of each row sum to 100 %.\n\n" + tables.splits_table(mdf))
