"""abstain.md and Figure 3: abstain models (F answers where S selects) of every robust model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..analysis.abstain import abstain_metrics
from ..analysis.choose import matched_tau
from ..analysis.selectors import HEADLINE, SELECTORS, SelectorSpec, selections, selector_grid
from . import tables
from .models import Context, ModelInfo, nan_if_none


def abstain_frames(models: Sequence[ModelInfo], taus: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every selector over the tau grid on test, for Figure 3's curves; the table: each selector
    without a threshold per model, and each selector with one at the tau whose validation R_rob^sel
    matches the headline selector's). Columns: model, loss, beta, role, selector (label), threshold,
    tau and the fields of analysis.abstain.AbstainMetrics."""
    curve, table = [], []
    for m in models:
        if m.role == "core":
            continue
        info = {"model": m.name, "loss": m.loss, "beta": nan_if_none(m.beta), "role": m.role}
        specs = selector_grid(m.records, taus)
        rows = [{**info, "selector": SELECTORS[s.kind].label, "threshold": s.threshold,
                 "tau": s.tau if s.threshold else float("nan"), **asdict(a)}
                for s, a in zip(specs, abstain_metrics(m.records, selections(specs, m.records)))]
        curve += rows
        table += [r for r in rows if not r["threshold"]]
        for kind, s in SELECTORS.items():
            if not s.threshold or m.val_records is None:
                continue
            tau = matched_tau(m.val_records, taus, kind)
            if tau is None:
                continue
            (a,) = abstain_metrics(m.records, [SelectorSpec(kind, tau).selection(m.records)])
            table.append({**info, **asdict(a), "tau": tau, "threshold": True,
                          "selector": f"{s.label} τ={tau:.2f} (R_rob^sel matched to "
                                      f"{SELECTORS[HEADLINE].label} on validation)"})
    return pd.DataFrame(curve), pd.DataFrame(table)


def abstain_md(table: pd.DataFrame, ctx: Context) -> str:
    """abstain.md."""
    return ("# Abstain models (F answers where S selects)\n\n" + ctx.head
            + "R_rob^sel: the selector is 1 on all of B_ε(x) (F robust on B_2ε(x) for ERI, by "
              "every attack run; for SR also every attack's lowest confidence at 2ε ≥ τ). "
              "The SR τ is matched to ERI's R_rob^sel on validation records.\n\n"
            + tables.abstain_table(table))


def headline_abstain_metrics(table: pd.DataFrame, headline: ModelInfo | None) -> dict[str, Any]:
    """``headline/rob_sel`` and ``headline/rob_acc_on_sel``: the headline model's abstain model with
    the headline selector."""
    if headline is None or not len(table):
        return {}
    e = table[(table["model"] == headline.name) & (table["selector"] == SELECTORS[HEADLINE].label)].iloc[0]
    return {"headline/rob_sel": e["rob_sel"], "headline/rob_acc_on_sel": e["rob_acc_on_sel"]}
