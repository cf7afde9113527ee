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


def ci(x: Any, lo: Any, hi: Any, digits: int = 1) -> str:
    """A rate with its 95 % interval in percent, e.g. '72.3 [69.5, 75.0]'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{pct(x, digits)} [{pct(lo, digits)}, {pct(hi, digits)}]"


def dci(d: Any, lo: Any, hi: Any, digits: int = 1) -> str:
    """A paired difference with its 95 % interval in points, e.g. '+3.1 [+1.0, +5.2]'."""
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return DASH
    return f"{pp(d, digits)} [{pp(lo, digits)}, {pp(hi, digits)}]"


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
def _ci(r: Any, key: str) -> str:
    return ci(r[key], r[f"{key}_lo"], r[f"{key}_hi"])


def _dci(r: Any, key: str) -> str:
    return dci(r[key], r[f"{key}_lo"], r[f"{key}_hi"])


def summary_table(mdf: pd.DataFrame) -> str:
    """Per model: R_nat (1), R_rob^acc (1) and R_rob^-acc (2) at eps and at 2 eps, each with its
    exact 95 % interval. ``mdf`` columns: name, loss, beta, role, and for each of nat_acc,
    rob_acc_1x, rob_inacc_1x, rob_acc_2x, rob_inacc_2x the value and ``_lo`` / ``_hi``."""
    headers = ["model", "loss", "β", "role", "R_nat", "R_rob^acc (ε)", "R_rob^-acc (ε)",
               "R_rob^acc (2ε)", "R_rob^-acc (2ε)"]
    keys = ("nat_acc", "rob_acc_1x", "rob_inacc_1x", "rob_acc_2x", "rob_inacc_2x")
    rows = [[r["name"], r["loss"], num(r["beta"]), r["role"]] + [_ci(r, k) for k in keys]
            for _, r in mdf.iterrows()]
    return markdown(headers, rows, ["l", "l", "r", "l"] + ["r"] * 5)


def matched_table(rows: Sequence[dict[str, Any]]) -> str:
    """ERA (or another loss) against the TRADES model with the closest validation R_rob^acc:
    paired test differences with 95 % paired-bootstrap intervals. Each row: name, match,
    val_rob_acc, val_rob_acc_match, and d_rob_acc_1x, d_rob_inacc_1x, d_rob_inacc_2x with _lo/_hi."""
    headers = ["model", "matched TRADES model", "R_rob^acc (ε) on val", "Δ R_rob^acc (ε)",
               "Δ R_rob^-acc (ε)", "Δ R_rob^-acc (2ε)"]
    out = [[r["name"], r["match"], f"{pct(r['val_rob_acc'])} vs {pct(r['val_rob_acc_match'])}",
            _dci(r, "d_rob_acc_1x"), _dci(r, "d_rob_inacc_1x"), _dci(r, "d_rob_inacc_2x")]
           for r in rows]
    return markdown(headers, out, ["l", "l", "r", "r", "r", "r"])


def seeds_table(sdf: pd.DataFrame) -> str:
    """One row per training seed of the headline run, then mean ± sample sd and [min, max] over
    seeds when there are at least two. ``sdf`` columns: seed, nat_acc, rob_acc_1x, rob_inacc_1x,
    rob_inacc_2x and, with a core, comp_nat_acc, comp_rob_acc."""
    cols = [c for c in ("nat_acc", "rob_acc_1x", "rob_inacc_1x", "rob_inacc_2x", "comp_nat_acc",
                        "comp_rob_acc") if c in sdf.columns]
    names = {"nat_acc": "R_nat", "rob_acc_1x": "R_rob^acc (ε)", "rob_inacc_1x": "R_rob^-acc (ε)",
             "rob_inacc_2x": "R_rob^-acc (2ε)", "comp_nat_acc": "H: R_nat",
             "comp_rob_acc": "H: R_rob^acc (headline)"}
    rows = [[str(int(r["seed"]))] + [pct(r[c]) for c in cols] for _, r in sdf.iterrows()]
    if len(sdf) > 1:
        rows.append(["mean ± sd"] + [f"{pct(sdf[c].mean())} ± {100 * sdf[c].std(ddof=1):.1f}" for c in cols])
        rows.append(["[min, max]"] + [f"[{pct(sdf[c].min())}, {pct(sdf[c].max())}]" for c in cols])
    return markdown(["seed"] + [names[c] for c in cols], rows)


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
    """Table 1/5 analog: the core model against compositions, with exact 95 % intervals and the
    change against the core with its paired 95 % interval (None for the core row itself). Each
    row: eps, name, rob_acc, nat_acc (with _lo/_hi) and d_rob_acc, d_nat_acc (with _lo/_hi)."""
    headers = ["ε", "model", "R_rob^acc", "Δ R_rob^acc", "R_nat", "Δ R_nat"]
    out = []
    for r in rows:
        core = r.get("d_rob_acc") is None
        out.append([num(r["eps"]), r["name"], _ci(r, "rob_acc"), DASH if core else _dci(r, "d_rob_acc"),
                    _ci(r, "nat_acc"), DASH if core else _dci(r, "d_nat_acc")])
    return markdown(headers, out, ["r", "l", "r", "r", "r", "r"])


def compositions_table(cdf: pd.DataFrame) -> str:
    """Compositions (12) with the core on test: the headline R_rob^acc (sound AND the adaptive
    attack's verdict), its change against the core, and the three scores side by side. ``cdf``
    columns: name, selected, rob_sel, nat_acc, d_nat_acc, rob_acc, d_rob_acc (with _lo/_hi),
    rob_acc_sound, rob_acc_rule, rob_acc_adaptive (NaN without an adaptive attack)."""
    headers = ["composition", "selected", "R_rob^sel", "R_nat", "Δ R_nat", "R_rob^acc (headline)",
               "Δ R_rob^acc", "sound", "paper's rule", "adaptive"]
    rows = [[r["name"], pct(r["selected"]), pct(r["rob_sel"]), _ci(r, "nat_acc"), _dci(r, "d_nat_acc"),
             _ci(r, "rob_acc"), _dci(r, "d_rob_acc"), pct(r["rob_acc_sound"]), pct(r["rob_acc_rule"]),
             pct(r["rob_acc_adaptive"])] for _, r in cdf.iterrows()]
    return markdown(headers, rows)


def cascade_table(rows: Sequence[dict[str, Any]], verdict: str) -> str:
    """The greedy cascade against the best single 2-composition (both chosen on validation,
    scored on test with the sound rule). Each row: label, chain, nat_acc, rob_acc (with _lo/_hi),
    d_nat_acc, d_rob_acc (against the core)."""
    headers = ["", "models (first to last, then core)", "R_nat", "Δ R_nat", "R_rob^acc (sound)",
               "Δ R_rob^acc"]
    out = [[r["label"], r["chain"], _ci(r, "nat_acc"), pp(r["d_nat_acc"]), _ci(r, "rob_acc"),
            pp(r["d_rob_acc"])] for r in rows]
    return markdown(headers, out, ["l", "l", "r", "r", "r", "r"]) + "\n" + verdict + "\n"


def adaptive_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rule, sound and adaptive scores of each attacked composition. Each row: name, nat_acc,
    rob_acc_rule, rob_acc_sound, rob_acc_adaptive, rob_acc (headline, with _lo/_hi), gap,
    n_overcounted, n_fooled."""
    headers = ["composition", "R_nat", "paper's rule", "sound", "adaptive", "headline (lowest)",
               "rule − headline", "points over-counted", "H fooled"]
    out = [[r["name"], pct(r["nat_acc"]), pct(r["rob_acc_rule"]), pct(r["rob_acc_sound"]),
            pct(r["rob_acc_adaptive"]), _ci(r, "rob_acc"), pp(r["gap"]), str(int(r["n_overcounted"])),
            str(int(r["n_fooled"]))] for r in rows]
    return markdown(headers, out)


def certified_table(cdf: pd.DataFrame, r1: float, r2: float) -> str:
    """Table 2 analog: smoothed models (noise vs CRA training): certified R_rob^acc and R_rob^-acc
    at two L2 radii with exact 95 % intervals, and the S_CRI abstain models by the sound (2 eps)
    and the paper's (eps) robust-selection rule. ``cdf`` columns: name, loss, beta, nat_acc,
    rob_acc_r1, rob_inacc_r1, rob_acc_r2, rob_inacc_r2 (with _lo/_hi) and for rule in (sound,
    paper): rob_sel_<rule>, rob_acc_on_sel_<rule>."""
    headers = ["model", "loss", "β", "R_nat (G)", f"R_rob^acc (r={num(r1)})",
               f"R_rob^-acc (r={num(r1)})", f"R_rob^acc (r={num(r2)})", f"R_rob^-acc (r={num(r2)})",
               "R_rob^sel [sound]", "rob. acc. on sel. [sound]",
               "R_rob^sel [paper]", "rob. acc. on sel. [paper]"]
    rows = [[r["name"], r["loss"], num(r["beta"]), _ci(r, "nat_acc"), _ci(r, "rob_acc_r1"),
             _ci(r, "rob_inacc_r1"), _ci(r, "rob_acc_r2"), _ci(r, "rob_inacc_r2"),
             pct(r["rob_sel_sound"]), pct(r["rob_acc_on_sel_sound"]),
             pct(r["rob_sel_paper"]), pct(r["rob_acc_on_sel_paper"])]
            for _, r in cdf.iterrows()]
    return markdown(headers, rows, ["l", "l", "r"] + ["r"] * 9)


def certified_diff_table(rows: Sequence[dict[str, Any]], r1: float, r2: float) -> str:
    """CRA against noise fine-tuning: paired differences of certified accuracy and inaccuracy at
    the two radii with 95 % paired-bootstrap intervals. Each row: name, reference, and
    d_rob_acc_r1, d_rob_inacc_r1, d_rob_acc_r2, d_rob_inacc_r2 with _lo/_hi."""
    headers = ["model", "against", f"Δ R_rob^acc (r={num(r1)})", f"Δ R_rob^-acc (r={num(r1)})",
               f"Δ R_rob^acc (r={num(r2)})", f"Δ R_rob^-acc (r={num(r2)})"]
    out = [[r["name"], r["reference"]] + [_dci(r, k) for k in
                                          ("d_rob_acc_r1", "d_rob_inacc_r1", "d_rob_acc_r2", "d_rob_inacc_r2")]
           for r in rows]
    return markdown(headers, out, ["l", "l", "r", "r", "r", "r"])


def certified_compositions_table(rows: Sequence[dict[str, Any]]) -> str:
    """Compositions with the certified selector S_CRI: sound R_rob^acc (headline) with intervals,
    the paper's rule and the certified part. Each row: name, nat_acc, rob_acc (with _lo/_hi),
    d_nat_acc, d_rob_acc (with _lo/_hi), rob_acc_rule, rob_acc_certified, rob_sel."""
    headers = ["composition", "R_nat", "Δ R_nat", "R_rob^acc (sound)", "Δ R_rob^acc",
               "paper's rule", "certified part", "R_rob^sel"]
    out = [[r["name"], _ci(r, "nat_acc"), _dci(r, "d_nat_acc"), _ci(r, "rob_acc"), _dci(r, "d_rob_acc"),
            pct(r["rob_acc_rule"]), pct(r["rob_acc_certified"]), pct(r["rob_sel"])] for r in rows]
    return markdown(headers, out)
