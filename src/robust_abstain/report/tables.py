"""Markdown tables: pure functions, DataFrames / dicts in, a Markdown string out.

Metrics arrive as fractions and are printed as percent with one decimal; changes are printed in
percentage points with a sign. A tiny formatter is used instead of ``DataFrame.to_markdown`` so the
report does not depend on ``tabulate`` and its output is byte-stable.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

DASH = "–"


# ---------------------------------------------------------------------------------- formatting
def pct(x: Any, digits: int = 1) -> str:
    """A fraction as percent, e.g. 0.7234 -> '72.3'; NaN/None -> '–'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{100.0 * float(x):.{digits}f}"


def pp(x: Any, digits: int = 1) -> str:
    """A change of fractions in percentage points with a sign, e.g. 0.031 -> '+3.1'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    v = 100.0 * float(x)
    if round(v, digits) == 0:
        v = 0.0
    return f"{v:+.{digits}f}"


def num(x: Any) -> str:
    """A plain number (beta, tau, eps): '–' for None/NaN, else the shortest clean form."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown(headers: Sequence[str], rows: Iterable[Sequence[Any]],
             align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table. ``align``: one of 'l', 'r', 'c' per column (default:
    first column left, the others right)."""
    headers = [_cell(h) for h in headers]
    rows = [[_cell(c) for c in r] for r in rows]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row has {len(r)} cells, header has {len(headers)}")
    align = list(align) if align else ["l"] + ["r"] * (len(headers) - 1)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        out = []
        for c, w, a in zip(cells, widths, align):
            out.append(c.rjust(w) if a == "r" else c.center(w) if a == "c" else c.ljust(w))
        return "| " + " | ".join(out) + " |"

    sep = []
    for w, a in zip(widths, align):
        sep.append(("-" * (w - 1) + ":") if a == "r" else
                   (":" + "-" * (w - 2) + ":") if a == "c" else "-" * w)
    return "\n".join([line(headers), "| " + " | ".join(sep) + " |"] + [line(r) for r in rows]) + "\n"


# ---------------------------------------------------------------------------------- tables
def summary_table(mdf: pd.DataFrame) -> str:
    """Per model: R_nat (1), R_rob^acc (1) and R_rob^-acc (2) at eps and at 2 eps.

    ``mdf`` columns: name, loss, beta, role, nat_acc, rob_acc_1x, rob_inacc_1x, rob_acc_2x,
    rob_inacc_2x (fractions)."""
    headers = ["model", "loss", "β", "role", "R_nat", "R_rob^acc (ε)", "R_rob^-acc (ε)",
               "R_rob^acc (2ε)", "R_rob^-acc (2ε)"]
    rows = [[r["name"], r["loss"], num(r["beta"]), r["role"], pct(r["nat_acc"]),
             pct(r["rob_acc_1x"]), pct(r["rob_inacc_1x"]), pct(r["rob_acc_2x"]),
             pct(r["rob_inacc_2x"])] for _, r in mdf.iterrows()]
    return markdown(headers, rows, ["l", "l", "r", "l"] + ["r"] * 5)


def splits_table(mdf: pd.DataFrame) -> str:
    """Tables 7/8 analog: the four splits (robust/non-robust x accurate/inaccurate, summing to
    100 %) per model at eps and at 2 eps. ``mdf`` columns: name, and for s in (1x, 2x):
    rob_acc_s, rob_inacc_s, nonrob_acc_s, nonrob_inacc_s."""
    headers = ["model", "radius", "robust & accurate", "robust & inaccurate",
               "non-robust & accurate", "non-robust & inaccurate"]
    rows = []
    for _, r in mdf.iterrows():
        for s, label in (("1x", "ε"), ("2x", "2ε")):
            rows.append([r["name"], label, pct(r[f"rob_acc_{s}"]), pct(r[f"rob_inacc_{s}"]),
                         pct(r[f"nonrob_acc_{s}"]), pct(r[f"nonrob_inacc_{s}"])])
    return markdown(headers, rows, ["l", "l"] + ["r"] * 4)


def abstain_table(adf: pd.DataFrame) -> str:
    """Abstain models (F answers where S selects): R_rob^sel and robust accuracy on the selected
    points (Figure 3 in numbers). ``adf`` columns: model, selector, selected, nat_acc_on_sel,
    rob_sel, rob_acc_on_sel, rob_acc, rob_inacc."""
    headers = ["model", "selector", "selected", "nat. acc. on sel.", "R_rob^sel",
               "rob. acc. on sel.", "rob. acc. (all)", "rob. inacc. (all)"]
    rows = [[r["model"], r["selector"], pct(r["selected"]), pct(r["nat_acc_on_sel"]),
             pct(r["rob_sel"]), pct(r["rob_acc_on_sel"]), pct(r["rob_acc"]),
             pct(r["rob_inacc"])] for _, r in adf.iterrows()]
    return markdown(headers, rows, ["l", "l"] + ["r"] * 6)


def headline_table(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1/5 analog: the core model against compositions, per eps, with the change in
    percentage points. Each row: eps, name, rob_acc, nat_acc, d_rob_acc, d_nat_acc (None for the
    core row itself)."""
    headers = ["ε", "model", "R_rob^acc", "Δ R_rob^acc", "R_nat", "Δ R_nat"]
    out = [[num(r["eps"]), r["name"], pct(r["rob_acc"]), pp(r.get("d_rob_acc")),
            pct(r["nat_acc"]), pp(r.get("d_nat_acc"))] for r in rows]
    return markdown(headers, out, ["r", "l", "r", "r", "r", "r"])


def compositions_table(cdf: pd.DataFrame) -> str:
    """Every composition (12) with the core: selection, R_nat, R_rob^acc by the paper's rule and by
    the conservative rule, changes against the core. ``cdf`` columns: name, selected, rob_sel,
    nat_acc, d_nat_acc, rob_acc, d_rob_acc, rob_acc_conservative."""
    headers = ["composition", "selected", "R_rob^sel", "R_nat", "Δ R_nat", "R_rob^acc (rule)",
               "Δ R_rob^acc", "R_rob^acc (conservative)"]
    rows = [[r["name"], pct(r["selected"]), pct(r["rob_sel"]), pct(r["nat_acc"]),
             pp(r["d_nat_acc"]), pct(r["rob_acc"]), pp(r["d_rob_acc"]),
             pct(r["rob_acc_conservative"])] for _, r in cdf.iterrows()]
    return markdown(headers, rows)


def cascade_table(result: dict[str, Any]) -> str:
    """The greedy cascade (:func:`robust_abstain.compose.best_cascade`) against the best single
    2-composition."""
    single, m = result["best_single"], result["metrics"]
    rule = result.get("rule", "paper")
    headers = ["", "models (first to last, then core)", "R_nat", "Δ R_nat",
               f"R_rob^acc ({rule} rule)", "Δ R_rob^acc"]
    key = "rob_acc" if rule == "paper" else "rob_acc_conservative"
    sm = single["metrics"]
    rows = [["best 2-composition", single["name"], pct(sm["nat_acc"]), pp(sm["d_nat_acc"]),
             pct(sm[key]), pp(sm[key] - sm["core_rob_acc"])],
            ["greedy cascade", " → ".join(result["chain"]), pct(m["nat_acc"]), pp(m["d_nat_acc"]),
             pct(m[key]), pp(m[key] - m["core_rob_acc"])]]
    verdict = ("The cascade beats the best single composition by "
               f"{pp(result['gain'])} points." if result["beats_single"] else
               "No cascade beats the best single composition.")
    return markdown(headers, rows, ["l", "l", "r", "r", "r", "r"]) + "\n" + verdict + "\n"


def adaptive_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rule vs adaptive attack on compositions. Each row: name, nat_acc, rob_acc (paper rule),
    rob_acc_conservative, rob_acc_adaptive, gap, n_overcounted."""
    headers = ["composition", "R_nat", "R_rob^acc (rule)", "R_rob^acc (conservative)",
               "R_rob^acc (adaptive)", "rule − adaptive", "points over-counted"]
    out = [[r["name"], pct(r["nat_acc"]), pct(r["rob_acc"]), pct(r["rob_acc_conservative"]),
            pct(r["rob_acc_adaptive"]), pp(r["gap"]), str(int(r["n_overcounted"]))] for r in rows]
    return markdown(headers, out)


def certified_table(cdf: pd.DataFrame, r1: float, r2: float) -> str:
    """Table 2 analog: smoothed models (noise vs CRA training): certified R_rob^acc and R_rob^-acc
    at two L2 radii, and the S_CRI abstain models by the sound (2 eps) and the paper's (eps)
    robust-selection rule. ``cdf`` columns: name, loss, beta, nat_acc, rob_acc_r1, rob_inacc_r1,
    rob_acc_r2, rob_inacc_r2 and for rule in (sound, paper): rob_sel_<rule>,
    rob_acc_on_sel_<rule>, rob_acc_<rule>."""
    headers = ["model", "loss", "β", "R_nat (G)", f"R_rob^acc (r={num(r1)})",
               f"R_rob^-acc (r={num(r1)})", f"R_rob^acc (r={num(r2)})", f"R_rob^-acc (r={num(r2)})",
               "R_rob^sel [sound]", "rob. acc. on sel. [sound]", "rob. acc. [sound]",
               "R_rob^sel [paper]", "rob. acc. on sel. [paper]", "rob. acc. [paper]"]
    rows = [[r["name"], r["loss"], num(r["beta"]), pct(r["nat_acc"]), pct(r["rob_acc_r1"]),
             pct(r["rob_inacc_r1"]), pct(r["rob_acc_r2"]), pct(r["rob_inacc_r2"]),
             pct(r["rob_sel_sound"]), pct(r["rob_acc_on_sel_sound"]), pct(r["rob_acc_sound"]),
             pct(r["rob_sel_paper"]), pct(r["rob_acc_on_sel_paper"]), pct(r["rob_acc_paper"])]
            for _, r in cdf.iterrows()]
    return markdown(headers, rows, ["l", "l", "r"] + ["r"] * 11)
