"""The report: per-sample records in, Markdown tables + PNG figures out, headline metrics returned.

Nothing here attacks a model: every number is computed from records (analysis/records.py) by
analysis/metrics.py, selectors.py, abstain.py and compose.py. Every choice (tau, best composition,
cascade, matched pairs) is made on the models' **validation** records (analysis/choose.py) and
reported on the test records. Every rate carries an exact 95 % interval and every difference a
conclusion rests on a paired one (analysis/stats.py). :func:`build_report` writes, under
``out_dir``, one page or figure per function::

    summary.md        summary.summary_md          R_nat (1), R_rob^acc (1), R_rob^-acc (2) per model
                                                  at eps and 2 eps, fine-tunes against TRADES at
                                                  matched robust accuracy (paired), seed spread
    splits.md         summary.splits_md           Tables 7/8 analog
    abstain.md        abstain.abstain_md          abstain models: every selector per model
    compositions.md   compositions.compositions_md  Table 1/5 analog, every composition, and
                      cascades.cascades_md          the greedy cascade          [needs a core model]
    adaptive.md       compositions.adaptive_md    rule vs sound vs adaptive attack [adaptive records]
    comparison.md     comparison.comparison_md    every way of combining core and robust model on
                                                  one plane, chosen on validation    [baselines]
    certified.md      certified.certified_md      Table 2 analog, S_CRI, compositions  [certified]
    figures/rob_acc_vs_rob_inacc.png  figures.rob_acc_vs_rob_inacc   Figure 2 analog
    figures/selection_pareto.png      figures.selection_pareto       Figure 3 analog
    figures/compositions.png          figures.compositions           Figure 4 analog  [core]
    figures/comparison.png            figures.comparison             the comparison's plane [baselines]
    figures/certified_accuracy.png    certified.certified_figure     vs the radius   [certified]

and returns the flat metrics, rounded; :func:`metrics_json` adds Figure 1's (the caller writes
``metrics.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.metrics import model_masks
from ..analysis.records import CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS
from ..analysis.selectors import TAU_GRID
from ..errors import ParamError
from ..io import save_figure, save_text
from . import figures
from .abstain import abstain_frames, abstain_md, headline_abstain_metrics
from .cascades import cascades_md
from .certified import certified_figure, certified_md
from .comparison import (Baselines, comparison_frames, comparison_md, comparison_methods, comparison_metrics,
                         comparison_rows)
from .compositions import (adaptive_md, adaptive_metrics, attacked, best_row, composition_metrics,
                           composition_rows, compositions_md, headline_row)
from .models import Context, ModelInfo, Rates, check_records, check_roles, rounded, with_role
from .summary import model_metrics, role_metrics, splits_md, summary_md


def build_report(models: list[ModelInfo], out_dir: str | os.PathLike, eps: float,
                 certified: list[ModelInfo] | None = None,
                 adaptive: dict[str, pd.DataFrame] | None = None, *,
                 cert_eps: float | None = None, certified_core: pd.DataFrame | None = None,
                 max_nat_drop: float = 0.01, taus: np.ndarray | None = None, max_cascade: int = 4,
                 seed: int = 0, seed_runs: list[ModelInfo] | None = None,
                 seeds: list[int] | None = None,
                 seed_adaptive: list[pd.DataFrame] | None = None,
                 baselines: Baselines | None = None) -> dict[str, Any]:
    """Write the Markdown tables and PNG figures (module docstring) and return the headline metrics.

    ``models``: empirical records of every model (same test points; validation records on the same
    validation points), at most one ``core``, one ``base`` and one ``headline``. ``eps``: the
    threat model's radius (records' ``1x``). ``certified``: smoothed models' certified records
    (radii r1 = ``cert_eps`` (default ``eps``) and r2 = 2 * r1). ``adaptive``: adaptive records
    (records.py: index, selector, h_adv_wrong) keyed by model name. ``max_nat_drop``: the natural
    accuracy a composition may lose against the core to count as best (fraction, judged on
    validation). ``taus``: the threshold grid (default 0 ... 0.99). ``seed``: the paired
    bootstrap's seed. ``seed_runs``: the headline run trained with each of ``seeds`` (training
    seeds; the first is the ``headline`` model itself), for the seed spread. ``baselines``: the
    selection network's and the mixings' records, for the comparison (needs a core).

    Metric keys (fractions rounded to 4 decimals; ``_lo`` / ``_hi``: 95 % interval): ``n``;
    ``vs_trades/<model>/{d_rob_acc_1x,d_rob_inacc_1x,d_rob_inacc_2x}[_lo,_hi]``; ``seeds/...``;
    ``{core,base,headline}/{nat_acc,rob_acc,rob_inacc,rob_acc_2x,rob_inacc_2x}[_lo,_hi]``;
    ``headline/{rob_sel,rob_acc_on_sel}`` (S_ERI abstain model);
    ``{headline,best}_composition/{nat_acc,rob_acc,rob_acc_sound,rob_acc_rule,rob_acc_adaptive,
    d_nat_acc,d_rob_acc}[_lo,_hi]``; ``best_composition/feasible``;
    ``best_cascade/{length,nat_acc,rob_acc[_lo,_hi],gain[_lo,_hi]}``;
    ``adaptive/<composition>/{rob_acc_rule,rob_acc_sound,rob_acc_adaptive,rob_acc}``;
    ``certified/<name>/...``, ``certified/<cra>-<noise>/d_...``, ``certified/<name>/composition/...``."""
    if not models:
        raise ParamError("build_report needs at least one model")
    if not np.isfinite(eps) or eps <= 0:
        raise ParamError(f"eps must be finite and > 0, got {eps!r}")
    check_records(models, EMPIRICAL_COLUMNS, "")
    check_roles(models)
    core, headline = with_role(models, "core"), with_role(models, "headline")
    adaptive = adaptive or {}
    if adaptive and core is None:
        raise ParamError("adaptive records need a core model (role 'core') to compose with")
    taus = TAU_GRID if taus is None else np.asarray(taus, dtype=float)
    out, ctx = Path(out_dir), Context(eps, int(len(models[0].records)), seed)
    metrics: dict[str, Any] = {"n": ctx.n}

    mdf = model_metrics(models)
    text, entries = summary_md(models, mdf, ctx, core, seed_runs, seeds, seed_adaptive)
    save_text(text, out / "summary.md")
    save_text(splits_md(mdf, ctx), out / "splits.md")
    metrics.update({**entries, **role_metrics(models)})
    curve, table = abstain_frames(models, taus)
    if len(curve):
        save_text(abstain_md(table, ctx), out / "abstain.md")
        save_figure(figures.selection_pareto(curve), out / "figures" / "selection_pareto.png")
    metrics.update(headline_abstain_metrics(table, headline))
    save_figure(figures.rob_acc_vs_rob_inacc(mdf, eps), out / "figures" / "rob_acc_vs_rob_inacc.png")
    if core is not None:
        metrics.update(_compositions(models, core, headline, mdf, adaptive, ctx, out, taus,
                                     max_nat_drop, max_cascade, baselines))
    if certified:
        r1 = float(eps if cert_eps is None else cert_eps)
        if not np.isfinite(r1) or r1 <= 0:
            raise ParamError(f"cert_eps must be finite and > 0, got {cert_eps!r}")
        check_records(certified, CERTIFIED_COLUMNS, "certified ")
        text, entries = certified_md(certified, certified_core, r1, seed)
        save_text(text, out / "certified.md")
        save_figure(certified_figure(certified, r1), out / "figures" / "certified_accuracy.png")
        metrics.update(entries)
    return rounded(metrics)


def _compositions(models: list[ModelInfo], core: ModelInfo, headline: ModelInfo | None,
                  mdf: pd.DataFrame, adaptive: dict[str, pd.DataFrame], ctx: Context, out: Path,
                  taus: np.ndarray, max_nat_drop: float, max_cascade: int,
                  baselines: Baselines | None) -> dict[str, Any]:
    """compositions.md, figures/compositions.png, adaptive.md and (with ``baselines``)
    comparison.md with figures/comparison.png; returns their entries."""
    rows = composition_rows(models, core, adaptive, taus, max_nat_drop, ctx.seed)
    if not rows:
        return {}
    core_rates = Rates.of(model_masks(core.records))
    best, feasible = best_row(rows, core, max_nat_drop)
    head = headline_row(rows, headline)
    cascades, cascade_metrics, chain = cascades_md(models, core, taus, max_nat_drop, max_cascade, ctx.seed)
    save_text(compositions_md(rows, core_rates, core, best, feasible, head, cascades, ctx, max_nat_drop),
              out / "compositions.md")
    core_point = {"name": core.name, "nat_acc": core_rates.nat_acc.value, "rob_acc": core_rates.rob_acc.value}
    save_figure(figures.compositions(pd.DataFrame([r.frame_row() for r in rows]), core_point,
                                     mdf[mdf["role"] != "core"]), out / "figures" / "compositions.png")
    if attacked(rows):
        save_text(adaptive_md(rows, ctx), out / "adaptive.md")
    entries = {**composition_metrics(rows, best, feasible, head), **cascade_metrics, **adaptive_metrics(rows)}
    if baselines is not None:
        methods = comparison_methods(models, core, rows, chain, baselines, taus, max_nat_drop)
        crows = comparison_rows(methods, methods[0], ctx.seed)
        save_text(comparison_md(crows, ctx.eps, ctx.n, max_nat_drop), out / "comparison.md")
        save_figure(figures.comparison(*comparison_frames(methods)), out / "figures" / "comparison.png")
        entries.update(comparison_metrics(crows))
    return entries


def metrics_json(metrics: dict[str, Any], synthetic: dict[str, dict[str, dict[str, float]]]
                 ) -> dict[str, Any]:
    """metrics.json: the report's metrics, then Figure 1's (``synthetic/<split>/<model>/<rate>``,
    rounded to 4 decimals) from the synthetic stage's ``{split: {model: {rate: value}}}``."""
    return {**metrics, **{f"synthetic/{split}/{m}/{k}": round(v, 4) for split, per_model in synthetic.items()
                          for m, d in per_model.items() for k, v in d.items()}}
