"""Figures (matplotlib, Agg backend): pure functions, DataFrames in, a ``Figure`` out. The caller
saves them with :func:`robust_abstain.io.save_figure` (PNG without timestamps).

    Figure 2 analog  :func:`rob_acc_vs_rob_inacc`  robust accuracy vs robust inaccuracy over beta
    Figure 3 analog  :func:`selection_pareto`      R_rob^sel vs robust accuracy on selected
    Figure 4 analog  :func:`compositions`          natural vs robust accuracy of compositions
    comparison       :func:`comparison`            every way of combining core and robust model
    certified        :func:`certified_curves`      certified accuracy vs L2 radius
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..analysis.abstain import pareto_front  # noqa: E402
from ..losses import LOSSES  # noqa: E402
from .models import FINE_TUNED  # noqa: E402

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]


def _losses(df: pd.DataFrame) -> list[str]:
    """The losses in ``df``, in the registry's order (losses.LOSSES), unknown ones last."""
    present = list(dict.fromkeys(df["loss"].tolist()))
    order = list(LOSSES)
    return sorted(present, key=lambda l: (order.index(l) if l in order else 99, l))


def _label(loss: str) -> str:
    return LOSSES[loss].label if loss in LOSSES else loss.upper()


def _kinds(df: pd.DataFrame, threshold: bool) -> list[tuple[str, pd.DataFrame]]:
    """The selectors of ``df`` (column ``selector``) with a threshold or without, each with its rows."""
    d = df[df["threshold"].astype(bool) == threshold]
    return [(kind, d[d["selector"] == kind]) for kind in dict.fromkeys(d["selector"].tolist())]


def _beta_label(b) -> str:
    return "" if b is None or (isinstance(b, float) and math.isnan(b)) else f"β={b:g}"


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}


def _sort_beta(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(_b=df["beta"].astype(float)).sort_values(["_b", "name"], kind="stable")


def _curve_models(curves: pd.DataFrame) -> list[str]:
    """Models whose curve over tau is drawn: the base and headline models (all models if neither has
    the selector's evidence), so the figure stays readable."""
    keep = list(dict.fromkeys(curves.loc[curves["role"].isin(["base", "headline"]), "model"].tolist()))
    return keep or list(dict.fromkeys(curves["model"].tolist()))


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _pct_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel + " [%]")
    ax.set_ylabel(ylabel + " [%]")
    ax.grid(True, alpha=0.3)


def rob_acc_vs_rob_inacc(mdf: pd.DataFrame, eps: float) -> Figure:
    """Figure 2 analog: R_rob^acc (y) against R_rob^-acc (x), one point per fine-tuned model
    (labelled with beta), connected per loss (TRADES vs ERA, MART/DGA if present); the robust base
    model as a black cross. Left panel at eps, right at 2 eps. ``mdf`` as for the summary table."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    tuned = mdf[mdf["role"].isin(FINE_TUNED)]
    base = mdf[mdf["role"] == "base"]
    for ax, s, title in zip(axes, ("", "_2x"), (f"ε = {eps:g}", f"2ε = {2 * eps:g}")):
        for i, loss in enumerate(_losses(tuned)):
            d = _sort_beta(tuned[tuned["loss"] == loss])
            x, y = 100 * d[f"rob_inacc{s}"].to_numpy(), 100 * d[f"rob_acc{s}"].to_numpy()
            ax.plot(x, y, label=_label(loss), linewidth=1.2, markersize=6, **_style(i))
            _bars(ax, d, f"rob_inacc{s}", f"rob_acc{s}", _style(i)["color"])
            for xi, yi, b in zip(x, y, d["beta"]):
                ax.annotate(_beta_label(b), (xi, yi), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
            head = d[d["role"] == "headline"]
            ax.scatter(100 * head[f"rob_inacc{s}"], 100 * head[f"rob_acc{s}"], s=140,
                       facecolors="none", edgecolors="k", linewidths=1.2, zorder=5)
        for _, r in base.iterrows():
            ax.scatter([100 * r[f"rob_inacc{s}"]], [100 * r[f"rob_acc{s}"]], marker="x", c="k",
                       s=60, zorder=6, label=f"base ({r['name']})")
        _bars(ax, base, f"rob_inacc{s}", f"rob_acc{s}", "k")
        _pct_axes(ax, "robust inaccuracy $R_{rob}^{-acc}$", "robust accuracy $R_{rob}^{acc}$")
        ax.set_title(title)
    _legend(axes[1])
    fig.suptitle("Robust accuracy vs robust inaccuracy (circled: headline run; bars: 95 % intervals)")
    fig.tight_layout()
    return fig


def _bars(ax, d: pd.DataFrame, xkey: str, ykey: str, color: str) -> None:
    """95 % interval bars (columns ``<key>_lo`` / ``<key>_hi``) where the frame has them."""
    cols = [f"{k}_{e}" for k in (xkey, ykey) for e in ("lo", "hi")]
    if not all(c in d.columns for c in cols) or not len(d):
        return
    x, y = 100 * d[xkey].to_numpy(float), 100 * d[ykey].to_numpy(float)
    xerr = np.abs(np.vstack([x - 100 * d[cols[0]].to_numpy(float), 100 * d[cols[1]].to_numpy(float) - x]))
    yerr = np.abs(np.vstack([y - 100 * d[cols[2]].to_numpy(float), 100 * d[cols[3]].to_numpy(float) - y]))
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, elinewidth=0.7, alpha=0.6,
                capsize=2)


def selection_pareto(adf: pd.DataFrame) -> Figure:
    """Figure 3 analog: R_rob^sel (x) against robust accuracy on the selected points (y) of the
    abstain models. Selectors without a threshold (ERI): one point per fine-tuned model, the Pareto
    front over beta connected per loss, the base model as a black cross. Selectors with a threshold
    (SR): one dashed curve over tau for the base and headline models. ``adf`` columns: model, loss,
    beta, role, selector (its label), threshold (bool), tau, rob_sel, rob_acc_on_sel."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for kind, k in _kinds(adf, threshold=False):
        ri = k[k["role"].isin(FINE_TUNED)]
        for i, loss in enumerate(_losses(ri)):
            d = ri[ri["loss"] == loss].reset_index(drop=True)
            st = _style(i)
            ax.scatter(100 * d["rob_sel"], 100 * d["rob_acc_on_sel"], color=st["color"],
                       marker=st["marker"], s=28, alpha=0.6)
            front = pareto_front(list(zip(d["rob_sel"], d["rob_acc_on_sel"])))
            if front:
                f = d.iloc[front]
                ax.plot(100 * f["rob_sel"], 100 * f["rob_acc_on_sel"],
                        label=f"{kind}, {_label(loss)} (front over β)", **st)
            for _, r in d.iterrows():
                if np.isfinite(r["rob_acc_on_sel"]):
                    ax.annotate(_beta_label(r["beta"]) or r["model"],
                                (100 * r["rob_sel"], 100 * r["rob_acc_on_sel"]),
                                textcoords="offset points", xytext=(4, 3), fontsize=7)
        for _, r in k[k["role"] == "base"].iterrows():
            ax.scatter([100 * r["rob_sel"]], [100 * r["rob_acc_on_sel"]], marker="x", c="k", s=60,
                       zorder=6, label=f"{kind}, base ({r['model']})")
    j = 0
    for kind, curves in _kinds(adf, threshold=True):
        for model in _curve_models(curves):
            d = curves[curves["model"] == model].sort_values("tau")
            d = d[np.isfinite(d["rob_acc_on_sel"].to_numpy(float))]
            ax.plot(100 * d["rob_sel"], 100 * d["rob_acc_on_sel"], linestyle="--", linewidth=1.2,
                    color=f"C{(j + 5) % 10}", label=f"{kind} over τ ({model})")
            j += 1
    _pct_axes(ax, "robust selection $R_{rob}^{sel}$", "robust accuracy on selected")
    ax.set_title("Abstain models: robust selection vs robust accuracy (2ε rule)")
    _legend(ax)
    fig.tight_layout()
    return fig


def compositions(cdf: pd.DataFrame, core: dict, robust_models: pd.DataFrame | None = None) -> Figure:
    """Figure 4 analog: natural accuracy (y) against robust accuracy (x, the headline score: sound
    and not fooled by the adaptive attack) of the compositions (12) with the core model (a star),
    with 95 % interval bars where ``cdf`` has ``_lo`` / ``_hi`` columns. Compositions with a
    selector without a threshold (ERI) of the fine-tuned models connected over beta per loss, of the
    base model a black cross; with a threshold (SR, tau chosen on validation) as diamonds; the
    robust models alone as grey dots when given. ``cdf`` columns: name, model, loss, beta, role,
    selector, threshold, nat_acc, rob_acc; ``core``: name, nat_acc, rob_acc."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for kind, k in _kinds(cdf, threshold=False):
        tuned = k[k["role"].isin(FINE_TUNED)]
        for i, loss in enumerate(_losses(tuned)):
            d = _sort_beta(tuned[tuned["loss"] == loss])
            ax.plot(100 * d["rob_acc"], 100 * d["nat_acc"], label=f"core + {kind}({_label(loss)})",
                    linewidth=1.2, **_style(i))
            _bars(ax, d, "rob_acc", "nat_acc", _style(i)["color"])
            for _, r in d.iterrows():
                ax.annotate(_beta_label(r["beta"]) or r["model"], (100 * r["rob_acc"], 100 * r["nat_acc"]),
                            textcoords="offset points", xytext=(4, 3), fontsize=7)
            head = d[d["role"] == "headline"]
            ax.scatter(100 * head["rob_acc"], 100 * head["nat_acc"], s=140, facecolors="none",
                       edgecolors="k", linewidths=1.2, zorder=5)
        for _, r in k[k["role"] == "base"].iterrows():
            ax.scatter([100 * r["rob_acc"]], [100 * r["nat_acc"]], marker="x", c="k", s=60, zorder=6,
                       label=f"core + {kind}(base: {r['model']})")
    for kind, d in _kinds(cdf, threshold=True):
        ax.scatter(100 * d["rob_acc"], 100 * d["nat_acc"], marker="D", s=22, c="C6", zorder=4,
                   label=f"core + {kind} (τ chosen on validation)")
        _bars(ax, d, "rob_acc", "nat_acc", "C6")
    if robust_models is not None and len(robust_models):
        ax.scatter(100 * robust_models["rob_acc"], 100 * robust_models["nat_acc"], c="0.6",
                   marker=".", s=40, label="robust models alone")
    return _with_core(fig, ax, core["rob_acc"], core["nat_acc"], core["name"], "(sound, adaptive)",
                      "Compositions with the core model (circled: headline run)")


def _with_core(fig: Figure, ax, rob_acc: float, nat_acc: float, name: str, score: str, title: str) -> Figure:
    """The core model as a star with its natural accuracy as a dotted line; axes, title, legend."""
    ax.scatter([100 * rob_acc], [100 * nat_acc], marker="*", s=260, c="gold",
               edgecolors="k", zorder=6, label=f"core ({name})")
    ax.axhline(100 * nat_acc, color="k", linewidth=0.6, linestyle=":")
    _pct_axes(ax, f"robust accuracy $R_{{rob}}^{{acc}}$ {score}".rstrip(), "natural accuracy $R_{nat}$")
    ax.set_title(title)
    _legend(ax)
    fig.tight_layout()
    return fig


def comparison(points: pd.DataFrame, fronts: pd.DataFrame) -> Figure:
    """Natural accuracy (y) against robust accuracy (x) of every way of combining the core with a
    robust model: each method's point chosen on validation (``points``: family, label, nat_acc,
    rob_acc and their ``_lo`` / ``_hi``; the core a star, models on their own grey dots) with 95 %
    interval bars, and the settings it was chosen from as small faint markers (``fronts``: family,
    nat_acc, rob_acc)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    alone = points[points["family"].isin(["core", "robust model"])]
    methods = points[~points["family"].isin(["core", "robust model"])]
    for i, (_, r) in enumerate(methods.iterrows()):
        st = _style(i)
        f = fronts[fronts["family"] == r["family"]]
        if len(f) > 1:
            ax.scatter(100 * f["rob_acc"], 100 * f["nat_acc"], color=st["color"], alpha=0.45, s=9,
                       marker=st["marker"], linewidths=0)
        ax.scatter([100 * r["rob_acc"]], [100 * r["nat_acc"]], s=50, zorder=5, edgecolors="k",
                   label=f"{r['family']}: {r['label']}", **st)
        _bars(ax, pd.DataFrame([r]), "rob_acc", "nat_acc", st["color"])
    robust_models = alone[alone["family"] == "robust model"]
    ax.scatter(100 * robust_models["rob_acc"], 100 * robust_models["nat_acc"], c="0.55", marker="^", s=28,
               label="robust models alone")
    for _, r in robust_models.iterrows():
        ax.annotate(r["label"], (100 * r["rob_acc"], 100 * r["nat_acc"]), textcoords="offset points",
                    xytext=(3, -8), fontsize=6, color="0.4")
    core = alone[alone["family"] == "core"].iloc[0]
    return _with_core(fig, ax, core["rob_acc"], core["nat_acc"], core["label"], "",
                      "Core + robust model: every method, point chosen on validation")


def certified_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                     marks: tuple[float, ...] = ()) -> Figure:
    """Certified robust accuracy against the L2 radius, one curve per smoothed model
    (``curves``: name -> (radii, accuracy as fractions)); vertical lines at ``marks`` (eps, 2 eps)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, (r, a)) in enumerate(curves.items()):
        ax.plot(r, 100 * np.asarray(a), color=f"C{i % 10}", label=name, linewidth=1.4)
    for m in marks:
        ax.axvline(m, color="k", linewidth=0.6, linestyle=":")
    ax.set_xlabel("L2 radius r")
    ax.set_ylabel("certified robust accuracy [%]")
    ax.grid(True, alpha=0.3)
    ax.set_title("Certified accuracy of the smoothed classifiers")
    _legend(ax)
    fig.tight_layout()
    return fig
