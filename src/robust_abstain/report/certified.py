"""certified.md and the certified-accuracy figure: smoothed models' certified metrics (Table 2 analog),
fine-tunes against their reference loss (CRA against noise), and compositions with S_CRI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.abstain import AbstainMetrics, certified_abstain_metrics
from ..analysis.compose import compose_certified
from ..analysis.metrics import certified_accuracy_curve, certified_model_masks
from ..analysis.selectors import CRI_RULES, SELECTORS, cri
from ..analysis.stats import Interval, paired_diff_ci, rate_ci
from ..losses import LOSSES
from . import figures, tables
from .models import RATES, ModelInfo, Rates, flat, measured, nan_if_none


@dataclass(frozen=True)
class CertifiedModel:
    """A smoothed model G: its certified :class:`Rates` at r1 (and ``_2x``: r2), and its S_CRI
    abstain model by each robust-selection rule (``abstain[rule]``)."""

    name: str
    loss: str
    beta: float
    rates: Rates
    abstain: dict[str, AbstainMetrics]

    def metrics(self) -> dict[str, Any]:
        """``certified/<name>/...``: the rates with intervals, R_rob^sel by each rule."""
        p = f"certified/{self.name}"
        return {**flat(self.rates, RATES, p),
                **{f"{p}/rob_sel_{rule}": self.abstain[rule].rob_sel for rule in CRI_RULES}}


@dataclass(frozen=True)
class CertifiedPair:
    """A fine-tune against a fine-tune of its loss's reference (LOSSES): paired differences of
    certified accuracy and inaccuracy at r1 and r2 (this model minus the reference)."""

    name: str
    reference: str
    d_rob_acc_r1: Interval
    d_rob_inacc_r1: Interval
    d_rob_acc_r2: Interval
    d_rob_inacc_r2: Interval


#: a pair's differences and the per-point outcomes (metrics.certified_model_masks) they compare
PAIR_DIFFS = {"d_rob_acc_r1": "rob_acc", "d_rob_inacc_r1": "rob_inacc", "d_rob_acc_r2": "rob_acc_2x",
              "d_rob_inacc_r2": "rob_inacc_2x"}


@dataclass(frozen=True)
class CertifiedComposition:
    """(12) of G with the core under S_CRI (sound rule) on test: rates with exact 95 % intervals,
    changes against the core with paired ones, the paper's rule, the certified part, R_rob^sel."""

    name: str
    nat_acc: Interval
    rob_acc: Interval
    d_nat_acc: Interval
    d_rob_acc: Interval
    rob_acc_rule: float
    rob_acc_certified: float
    rob_sel: float


def _pairs(certified: Sequence[ModelInfo], masks: dict[str, dict[str, np.ndarray]],
           seed: int) -> list[CertifiedPair]:
    """Every model against each fine-tune (role sweep) of its loss's reference, in order."""
    out = []
    for m in certified:
        reference = LOSSES[m.loss].reference if m.loss in LOSSES else None
        for ref in [r for r in certified if r.loss == reference and r.role == "sweep"]:
            a, b = masks[m.name], masks[ref.name]
            out.append(CertifiedPair(m.name, ref.name, **{d: paired_diff_ci(a[k], b[k], seed=seed)
                                                          for d, k in PAIR_DIFFS.items()}))
    return out


def _composition(m: ModelInfo, core: pd.DataFrame, r1: float, seed: int) -> tuple[CertifiedComposition, Any]:
    o = compose_certified(m.records, core, cri(m.records, r1, "sound"))
    return CertifiedComposition(f"{m.name}+{SELECTORS['CRI'].label}", rate_ci(o.h_correct), rate_ci(o.sound),
                                paired_diff_ci(o.h_correct, o.core_correct, seed=seed),
                                paired_diff_ci(o.sound, o.core_robust, seed=seed),
                                o.rob_acc_rule, o.rob_acc_certified, o.rob_sel), o


def certified_md(certified: Sequence[ModelInfo], certified_core: pd.DataFrame | None, r1: float,
                 seed: int) -> tuple[str, dict[str, Any]]:
    """certified.md (radii r1 and r2 = 2 r1) and its ``certified/...`` entries."""
    r2 = 2 * r1
    masks = {m.name: certified_model_masks(m.records, r1, r2) for m in certified}
    rows = [CertifiedModel(m.name, m.loss, nan_if_none(m.beta), Rates.of(masks[m.name]),
                           {rule: certified_abstain_metrics(m.records, cri(m.records, r1, rule))
                            for rule in CRI_RULES})
            for m in certified]
    metrics = {k: v for r in rows for k, v in r.metrics().items()}
    pairs = _pairs(certified, masks, seed)
    for p in pairs:
        metrics.update(flat(p, ("d_rob_acc_r1", "d_rob_inacc_r1"), f"certified/{p.name}-{p.reference}"))
    text = ("# Certified models (Table 2 analog)\n\n"
            + f"Randomized smoothing, L2 radii r1 = {r1:g}, r2 = {r2:g}; {len(certified[0].records)} "
              "test points; percent with exact 95 % intervals.\n"
            + "S_CRI robust selection: [sound] certified radius ≥ 2ε (Appendix A.3); "
              "[paper] radius ≥ ε as the paper counts it (optimistic).\n\n"
            + tables.certified_table(rows, r1, r2))
    losses = {m.name: m.loss for m in certified}
    for loss in dict.fromkeys(losses[p.name] for p in pairs):
        label, ref = LOSSES[loss].label, LOSSES[LOSSES[loss].reference].label
        text += (f"\n## {label} against {ref} fine-tuning (paired differences, 95 % paired bootstrap)\n\n"
                 + tables.certified_diff_table([p for p in pairs if losses[p.name] == loss], r1, r2))
    if certified_core is not None:
        comps = [_composition(m, certified_core, r1, seed) for m in certified]
        for m, (c, _) in zip(certified, comps):
            metrics.update(measured(flat(c, ("nat_acc", "rob_acc", "d_nat_acc", "d_rob_acc"),
                                         f"certified/{m.name}/composition")))
        o = comps[-1][1]
        text += ("\n\n## Compositions with the core model (12), certified selector S_CRI at ε = "
                 f"{r1:g}\n\nCore model (L2 APGD at ε): natural {100 * o.core_nat_acc:.1f} %, "
                 f"robust {100 * o.core_rob_acc:.1f} %. R_rob^acc (sound): robustly selected "
                 "(radius ≥ 2ε) and G certified correct, or G certified correct at ε and the core "
                 "robust-accurate at ε; no adaptive attack applies (G is certified on the ball). The "
                 "paper's rule (radius ≥ ε counts as robustly selected, else the core) is kept for "
                 "comparison; `certified part` counts only certified robust-accurate points.\n\n"
                 + tables.certified_compositions_table([c for c, _ in comps]))
    return text, metrics


def certified_figure(certified: Sequence[ModelInfo], r1: float) -> Figure:
    """figures/certified_accuracy.png: certified accuracy against the L2 radius, lines at r1, r2."""
    r2 = 2 * r1
    rmax = max([r2 * 1.25] + [float(m.records["cert_radius"].max()) for m in certified])
    radii = np.linspace(0.0, rmax, 101)
    curves = {m.name: (radii, certified_accuracy_curve(m.records, radii)) for m in certified}
    return figures.certified_curves(curves, (r1, r2))
