"""Markdown tables: pure functions, DataFrames or typed rows in, a Markdown string out.

Metrics arrive as fractions and are printed as percent with one decimal; changes are printed in
percentage points with a sign. A tiny formatter is used instead of ``DataFrame.to_markdown`` so the
report does not depend on ``tabulate`` and its output is byte-stable.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

from ..analysis.stats import Interval

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


def _iv(x: Interval) -> str:
    return ci(x.value, x.lo, x.hi)


def _div(x: Interval | None) -> str:
    return DASH if x is None else dci(x.value, x.lo, x.hi)


def summary_table(mdf: pd.DataFrame) -> str:
    """Per model: R_nat (1), R_rob^acc (1) and R_rob^-acc (2) at eps and at 2 eps, each with its
    exact 95 % interval. ``mdf`` columns: name, loss, beta, role, and for each of nat_acc,
    rob_acc, rob_inacc, rob_acc_2x, rob_inacc_2x the value and ``_lo`` / ``_hi``."""
    headers = ["model", "loss", "β", "role", "R_nat", "R_rob^acc (ε)", "R_rob^-acc (ε)",
               "R_rob^acc (2ε)", "R_rob^-acc (2ε)"]
    keys = ("nat_acc", "rob_acc", "rob_inacc", "rob_acc_2x", "rob_inacc_2x")
    rows = [[r["name"], r["loss"], num(r["beta"]), r["role"]] + [_ci(r, k) for k in keys]
            for _, r in mdf.iterrows()]
    return markdown(headers, rows, ["l", "l", "r", "l"] + ["r"] * 5)


def matched_table(pairs: Sequence[Any], baseline: str) -> str:
    """Fine-tunes against the ``baseline`` fine-tune with the closest validation R_rob^acc: paired
    test differences with 95 % paired-bootstrap intervals (summary.MatchedPair rows)."""
    headers = ["model", f"matched {baseline} model", "R_rob^acc (ε) on val", "Δ R_rob^acc (ε)",
               "Δ R_rob^-acc (ε)", "Δ R_rob^-acc (2ε)"]
    out = [[p.name, p.match, f"{pct(p.val_rob_acc)} vs {pct(p.val_rob_acc_match)}",
            _div(p.d_rob_acc_1x), _div(p.d_rob_inacc_1x), _div(p.d_rob_inacc_2x)] for p in pairs]
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
    100 %) per model at eps and at 2 eps. ``mdf`` columns: name, and for s in ("", "_2x"):
    rob_acc<s>, rob_inacc<s>, nonrob_acc<s>, nonrob_inacc<s>."""
    headers = ["model", "radius", "robust & accurate", "robust & inaccurate",
               "non-robust & accurate", "non-robust & inaccurate"]
    rows = []
    for _, r in mdf.iterrows():
        for s, label in (("", "ε"), ("_2x", "2ε")):
            rows.append([r["name"], label, pct(r[f"rob_acc{s}"]), pct(r[f"rob_inacc{s}"]),
                         pct(r[f"nonrob_acc{s}"]), pct(r[f"nonrob_inacc{s}"])])
    return markdown(headers, rows, ["l", "l"] + ["r"] * 4)


def abstain_table(adf: pd.DataFrame) -> str:
    """Abstain models (F answers where S selects): R_rob^sel and robust accuracy on the selected
    points (Figure 3 in numbers). ``adf`` columns: model, selector, and the fields of
    abstain.AbstainMetrics."""
    headers = ["model", "selector", "selected", "nat. acc. on sel.", "R_rob^sel",
               "rob. acc. on sel.", "rob. acc. (all)", "rob. inacc. (all)"]
    rows = [[r["model"], r["selector"], pct(r["selected"]), pct(r["nat_acc_on_sel"]),
             pct(r["rob_sel"]), pct(r["rob_acc_on_sel"]), pct(r["rob_acc"]),
             pct(r["rob_inacc"])] for _, r in adf.iterrows()]
    return markdown(headers, rows, ["l", "l"] + ["r"] * 6)


def headline_table(eps: float,
                   rows: Sequence[tuple[str, Interval, Interval | None, Interval, Interval | None]]) -> str:
    """Table 1/5 analog: the core model against compositions, with exact 95 % intervals and the
    change against the core with its paired 95 % interval. Each row: (name, R_rob^acc, its change,
    R_nat, its change), the changes None for the core itself."""
    headers = ["ε", "model", "R_rob^acc", "Δ R_rob^acc", "R_nat", "Δ R_nat"]
    out = [[num(eps), name, _iv(rob), _div(d_rob), _iv(nat), _div(d_nat)]
           for name, rob, d_rob, nat, d_nat in rows]
    return markdown(headers, out, ["r", "l", "r", "r", "r", "r"])


def compositions_table(rows: Sequence[Any]) -> str:
    """Compositions (12) with the core on test (compositions.CompositionRow): the headline
    R_rob^acc (sound AND the adaptive attack's verdict), its change against the core, and the
    three scores side by side (adaptive: – without an attack)."""
    headers = ["composition", "selected", "R_rob^sel", "R_nat", "Δ R_nat", "R_rob^acc (headline)",
               "Δ R_rob^acc", "sound", "paper's rule", "adaptive"]
    out = [[r.name, pct(r.selected), pct(r.rob_sel), _iv(r.nat_acc), _div(r.d_nat_acc),
            _iv(r.rob_acc), _div(r.d_rob_acc), pct(r.rob_acc_sound), pct(r.rob_acc_rule),
            pct(r.rob_acc_adaptive)] for r in rows]
    return markdown(headers, out)


def cascade_table(rows: Sequence[Any], verdict: str) -> str:
    """The greedy cascade against the best single 2-composition (both chosen on validation,
    scored on test with the sound rule; cascades.CascadeRow)."""
    headers = ["", "models (first to last, then core)", "R_nat", "Δ R_nat", "R_rob^acc (sound)",
               "Δ R_rob^acc"]
    out = [[r.label, r.chain, _iv(r.nat_acc), pp(r.d_nat_acc), _iv(r.rob_acc), pp(r.d_rob_acc)]
           for r in rows]
    return markdown(headers, out, ["l", "l", "r", "r", "r", "r"]) + "\n" + verdict + "\n"


def adaptive_table(rows: Sequence[Any]) -> str:
    """Rule, sound and adaptive scores of each attacked composition (compositions.CompositionRow)."""
    headers = ["composition", "R_nat", "paper's rule", "sound", "adaptive", "headline (lowest)",
               "rule − headline", "points over-counted", "H fooled"]
    out = [[r.name, pct(r.nat_acc.value), pct(r.rob_acc_rule), pct(r.rob_acc_sound),
            pct(r.rob_acc_adaptive), _iv(r.rob_acc), pp(r.gap), str(int(r.n_overcounted)),
            str(int(r.n_fooled))] for r in rows]
    return markdown(headers, out)


def certified_table(rows: Sequence[Any], r1: float, r2: float) -> str:
    """Table 2 analog: smoothed models (noise vs CRA training): certified R_rob^acc and R_rob^-acc
    at two L2 radii with exact 95 % intervals, and the S_CRI abstain models by the sound (2 eps)
    and the paper's (eps) robust-selection rule (certified.CertifiedModel rows)."""
    headers = ["model", "loss", "β", "R_nat (G)", f"R_rob^acc (r={num(r1)})",
               f"R_rob^-acc (r={num(r1)})", f"R_rob^acc (r={num(r2)})", f"R_rob^-acc (r={num(r2)})",
               "R_rob^sel [sound]", "rob. acc. on sel. [sound]",
               "R_rob^sel [paper]", "rob. acc. on sel. [paper]"]
    out = [[r.name, r.loss, num(r.beta), _iv(r.rates.nat_acc), _iv(r.rates.rob_acc),
            _iv(r.rates.rob_inacc), _iv(r.rates.rob_acc_2x), _iv(r.rates.rob_inacc_2x),
            pct(r.abstain["sound"].rob_sel), pct(r.abstain["sound"].rob_acc_on_sel),
            pct(r.abstain["paper"].rob_sel), pct(r.abstain["paper"].rob_acc_on_sel)] for r in rows]
    return markdown(headers, out, ["l", "l", "r"] + ["r"] * 9)


def certified_diff_table(pairs: Sequence[Any], r1: float, r2: float) -> str:
    """Fine-tunes against their reference loss's fine-tunes (CRA against noise): paired differences
    of certified accuracy and inaccuracy at the two radii with 95 % paired-bootstrap intervals
    (certified.CertifiedPair rows)."""
    headers = ["model", "against", f"Δ R_rob^acc (r={num(r1)})", f"Δ R_rob^-acc (r={num(r1)})",
               f"Δ R_rob^acc (r={num(r2)})", f"Δ R_rob^-acc (r={num(r2)})"]
    out = [[p.name, p.reference, _div(p.d_rob_acc_r1), _div(p.d_rob_inacc_r1), _div(p.d_rob_acc_r2),
            _div(p.d_rob_inacc_r2)] for p in pairs]
    return markdown(headers, out, ["l", "l", "r", "r", "r", "r"])


def certified_compositions_table(rows: Sequence[Any]) -> str:
    """Compositions with the certified selector S_CRI (certified.CertifiedComposition rows): sound
    R_rob^acc (headline) with intervals, the paper's rule and the certified part."""
    headers = ["composition", "R_nat", "Δ R_nat", "R_rob^acc (sound)", "Δ R_rob^acc",
               "paper's rule", "certified part", "R_rob^sel"]
    out = [[r.name, _iv(r.nat_acc), _div(r.d_nat_acc), _iv(r.rob_acc), _div(r.d_rob_acc),
            pct(r.rob_acc_rule), pct(r.rob_acc_certified), pct(r.rob_sel)] for r in rows]
    return markdown(headers, out)
