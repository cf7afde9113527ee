"""The budget study's table and figure (see budget.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from robust_abstain.io import save_csv, save_figure, save_text
from robust_abstain.training.study import plateau

#: plateau tolerance: a curve has plateaued once it stays within this of its last value;
TOL = 0.02  # about 1.5 standard errors of a rate near 80 % on the 500 validation points
ID = ["family", "name", "lr"]
#: the metrics whose plateau is the run's (default: all); the core's job is natural accuracy only
#: (its robustness falls as it trains, which is not a budget question)
CRITERIA = {"core": ("nat_acc",)}


def metrics_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in ID + ["step"] and df[c].notna().any()]


def plateau_table(df: pd.DataFrame, tol: float = TOL) -> pd.DataFrame:
    """Per run: each metric's last value and the step from which it stays within ``tol`` of it."""
    rows = []
    for keys, g in df.groupby(ID, sort=True):
        row = dict(zip(ID, keys))
        for m in metrics_of(g):
            row[m] = g.sort_values("step")[m].iloc[-1]
            row[f"{m} plateau"] = plateau(g["step"], g[m], tol)
        crit = CRITERIA.get(row["name"], metrics_of(g))
        row["plateau"] = max(row[f"{m} plateau"] for m in crit)
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(table: pd.DataFrame, df: pd.DataFrame, phase: str, tol: float, command: str) -> str:
    lines = [f"# Budget study: {phase}", "",
             f"Validation split only. Each run trains at a constant lr; the metrics are read at the "
             f"checkpoints {sorted(df['step'].unique().tolist())}. 'plateau' is the first checkpoint "
             f"from which every metric stays within {100 * tol:g} point(s) of its last value "
             f"(the core: natural accuracy only). "
             f"Rates in %. Command: `{command}`.", ""]
    for (family, name), g in table.groupby(["family", "name"], sort=False):
        ms = metrics_of(df[(df.family == family) & (df.name == name)])
        head = ["lr"] + [f"{m} (plateau)" for m in ms] + ["plateau"]
        lines += [f"## {family}: {name}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            cells = [f"{r['lr']:g}"] + [f"{100 * r[m]:.1f} ({int(r[f'{m} plateau'])})" for m in ms]
            lines.append("| " + " | ".join(cells + [str(int(r["plateau"]))]) + " |")
        lines.append("")
    return "\n".join(lines)


def _figure(df: pd.DataFrame, phase: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = list(df.groupby(["family", "name"], sort=False))
    ncol = max(len(metrics_of(g)) for _, g in groups)
    fig, axes = plt.subplots(len(groups), ncol, figsize=(2.6 * ncol, 2.1 * len(groups)), squeeze=False)
    for r, ((family, name), g) in enumerate(groups):
        ms = metrics_of(g)
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(ms):
                ax.axis("off")
                continue
            for lr, h in g.groupby("lr"):
                h = h.sort_values("step")
                ax.plot(h["step"].clip(lower=1), 100 * h[ms[c]], marker=".", label=f"lr {lr:g}")
            ax.set_xscale("log")
            ax.set_title(f"{name}: {ms[c]}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Budget study ({phase}): validation metrics (%) vs optimiser steps (step 0 at 1)")
    fig.tight_layout()
    return fig


def write_report(df: pd.DataFrame, phase: str, out: Path, command: str, tol: float = TOL) -> None:
    df = df.sort_values(ID + ["step"]).reset_index(drop=True)
    save_csv(df, out / f"budget_{phase}.csv")
    save_text(_markdown(plateau_table(df, tol), df, phase, tol, command) + "\n", out / f"budget_{phase}.md")
    save_figure(_figure(df, phase), out / f"budget_{phase}.png")
