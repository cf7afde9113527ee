"""The report: per-sample records in, Markdown tables + PNG figures out, headline metrics returned.

Nothing here attacks a model: every number is computed from records (records.py) by metrics.py,
selectors.py and compose.py. Every choice (tau, best composition, cascade, matched pairs) is made on
the models' **validation** records (choose.py) and reported on the test records. Every rate carries
an exact 95 % interval and every difference a conclusion rests on a paired one (stats.py).
:func:`build_report` writes, under ``out_dir``::

    summary.md         R_nat (1), R_rob^acc (1), R_rob^-acc (2) per model at eps and 2 eps, and
                       ERA - TRADES at matched robust accuracy (paired)
    splits.md          Tables 7/8 analog: the four robust/accurate splits at eps and 2 eps
    abstain.md         abstain models: S_ERI per model, S_SR at matched robust selection
    compositions.md    Table 1/5 analog (core vs compositions), the ERI and SR compositions of every
                       model, the greedy cascade                              [needs a core model]
    adaptive.md        rule vs sound vs adaptive attack on compositions      [``adaptive`` given]
    certified.md       Table 2 analog (noise vs CRA, S_CRI sound/paper rule) [``certified`` given]
    figures/rob_acc_vs_rob_inacc.png   Figure 2 analog (interval bars)
    figures/selection_pareto.png       Figure 3 analog
    figures/compositions.png           Figure 4 analog (interval bars)       [needs a core model]
    figures/certified_accuracy.png     certified accuracy vs radius          [``certified`` given]

and returns the flat headline metrics (the caller writes ``metrics.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics as M
from ..choose import matched_tau, sr_tau
from ..compose import (Candidate, best_cascade, best_composition, cascade_points,
                       certified_composition_outcome, composition_outcome)
from ..errors import DataError, ParamError
from ..io import save_figure, save_text
from ..records import CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, check
from ..selectors import (TAU_GRID, SelectorSpec, abstain_metrics_many, certified_abstain_metrics, cri,
                         eri, has_softmax_response, softmax_response, softmax_response_sweep)
from ..stats import paired_diff_ci, rate_ci
from . import figures, tables

ROLES = ("core", "base", "sweep", "headline")


@dataclass
class ModelInfo:
    """One model's records for the report.

    ``name``: unique label; ``loss``: training loss ("std", "trades", "era", "mart", "dga",
    "noise", "cra", ...); ``beta``: the loss's beta (None for core/base); ``role``:
    "core" (accurate standard model), "base" (robust model before fine-tuning), "sweep" (a point of
    the beta sweep), "headline" (the ``loss.beta`` run); ``records``: test records (empirical, or
    certified for the ``certified`` list); ``val_records``: the same on validation points (needed
    for every choice; a model without them is reported but not composed)."""

    name: str
    loss: str
    beta: float | None
    role: str
    records: pd.DataFrame
    val_records: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ParamError(f"model {self.name}: role must be one of {list(ROLES)}, got {self.role!r}")


def _one(models: list[ModelInfo], role: str) -> ModelInfo | None:
    found = [m for m in models if m.role == role]
    if len(found) > 1:
        raise ParamError(f"at most one model may have role '{role}', got {[m.name for m in found]}")
    return found[0] if found else None


def _beta(b: float | None) -> float:
    return float("nan") if b is None else float(b)


def _with_ci(row: dict[str, Any], key: str, mask: np.ndarray) -> None:
    iv = rate_ci(mask)
    row[key], row[f"{key}_lo"], row[f"{key}_hi"] = iv.value, iv.lo, iv.hi


def _with_diff(row: dict[str, Any], key: str, a: np.ndarray, b: np.ndarray, seed: int) -> None:
    iv = paired_diff_ci(a, b, seed=seed)
    row[key], row[f"{key}_lo"], row[f"{key}_hi"] = iv.value, iv.lo, iv.hi


def _masks(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-point outcomes (1)/(2) of one model's empirical records, sorted by index."""
    d = M.by_index(df)
    out = {"nat_acc": accurate(d)}
    for s in (1, 2):
        out.update({f"{k}_{s}x": v for k, v in M.split_masks(d, s).items()})
    return out


def model_metrics(models: list[ModelInfo]) -> pd.DataFrame:
    """One row per model: name, loss, beta, role, nat_acc and, for s in (1x, 2x), rob_acc_s,
    rob_inacc_s, nonrob_acc_s, nonrob_inacc_s (fractions); nat_acc, rob_acc_s and rob_inacc_s
    also with their exact 95 % interval (``_lo``, ``_hi``)."""
    rows = []
    for m in models:
        row: dict[str, Any] = {"name": m.name, "loss": m.loss, "beta": _beta(m.beta), "role": m.role}
        for k, v in _masks(m.records).items():
            if k.startswith("nonrob"):
                row[k] = float(v.mean())
            else:
                _with_ci(row, k, v)
        rows.append(row)
    return pd.DataFrame(rows)


def _val_rob_acc(m: ModelInfo) -> float:
    return float(_masks(m.val_records)["rob_acc_1x"].mean())


def matched_pairs(models: list[ModelInfo], seed: int) -> list[dict[str, Any]]:
    """Every fine-tuned non-TRADES model against the TRADES fine-tune (same budget: role sweep or
    headline) whose validation R_rob^acc at eps is closest: paired test differences (this model
    minus TRADES)."""
    trades = [m for m in models if m.loss == "trades" and m.role in ("sweep", "headline")
              and m.val_records is not None]
    rows = []
    for m in models:
        if m.role not in ("sweep", "headline") or m.loss in ("trades", "std") or m.val_records is None \
                or not trades:
            continue
        v = _val_rob_acc(m)
        t = min(trades, key=lambda t: abs(_val_rob_acc(t) - v))
        a, b = _masks(m.records), _masks(t.records)
        row: dict[str, Any] = {"name": m.name, "match": t.name, "val_rob_acc": v,
                               "val_rob_acc_match": _val_rob_acc(t)}
        for k in ("rob_acc_1x", "rob_inacc_1x", "rob_inacc_2x"):
            _with_diff(row, f"d_{k}", a[k], b[k], seed)
        rows.append(row)
    return rows


def seed_spread(runs: list[ModelInfo], core: ModelInfo | None, seeds: list[int],
                adaptive: list[pd.DataFrame | None] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The headline run trained with each seed of ``seeds`` (``runs``, same order): its metrics (1)/(2)
    and, with a core, its S_ERI composition (headline score: sound and, with the seed's adaptive
    records in ``adaptive``, not fooled), one row per seed; and the sample sd over seeds."""
    rows = []
    adaptive = adaptive or [None] * len(runs)
    for seed, m, adv in zip(seeds, runs, adaptive):
        k = _masks(m.records)
        row = {"seed": seed, "nat_acc": float(k["nat_acc"].mean()), "rob_acc_1x": float(k["rob_acc_1x"].mean()),
               "rob_inacc_1x": float(k["rob_inacc_1x"].mean()), "rob_inacc_2x": float(k["rob_inacc_2x"].mean())}
        if core is not None:
            adv = None if adv is None else _adaptive_for({m.name: adv}, _Composable(m, SelectorSpec("ERI")))
            pts = composition_outcome(m.records, core.records, eri(m.records), adv)
            row["comp_nat_acc"] = float(pts["h_correct"].mean())
            row["comp_rob_acc"] = float(pts["rob_acc"].mean())
        rows.append(row)
    df = pd.DataFrame(rows)
    metrics: dict[str, Any] = {"seeds/n": len(rows)}
    if len(rows) > 1:
        for c in df.columns.drop("seed"):
            metrics[f"seeds/{c}_sd"] = float(df[c].std(ddof=1))
    return df, metrics


# ---------------------------------------------------------------------------------- abstain
def _abstain(models: list[ModelInfo], taus: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every selector over tau on test, for the Figure 3 curves; the table rows: ERI per model and
    SR at the tau whose validation R_rob^sel matches ERI's)."""
    curve, table = [], []
    for m in models:
        if m.role == "core":
            continue
        sels = [eri(m.records)]
        if has_softmax_response(m.records):
            sels += softmax_response_sweep(m.records, taus)
        info = {"model": m.name, "loss": m.loss, "beta": _beta(m.beta), "role": m.role}
        for s, am in zip(sels, abstain_metrics_many(m.records, sels)):
            kind = "ERI" if s.name == "ERI" else "SR"
            curve.append({**info, "selector": kind, "tau": s.params.get("tau", float("nan")), **am})
        table.append({**curve[-len(sels)], "selector": "ERI"})
        tau = matched_tau(m.val_records, taus) if m.val_records is not None else None
        if tau is not None:
            am = abstain_metrics_many(m.records, [softmax_response(m.records, tau)])[0]
            table.append({**info, **am, "tau": tau,
                          "selector": f"SR τ={tau:.2f} (R_rob^sel matched to ERI on validation)"})
    return pd.DataFrame(curve), pd.DataFrame(table)


# ---------------------------------------------------------------------------------- compositions
@dataclass
class _Composable:
    model: ModelInfo
    spec: SelectorSpec

    @property
    def name(self) -> str:
        return f"{self.model.name}+{self.spec.name}"


def _composables(models: list[ModelInfo], core: ModelInfo, taus: np.ndarray,
                 max_nat_drop: float) -> list[_Composable]:
    """S_ERI and S_SR (tau chosen on validation) for every robust model with validation records."""
    out = []
    for m in models:
        if m.role == "core" or m.val_records is None:
            continue
        out.append(_Composable(m, SelectorSpec("ERI")))
        tau = sr_tau(m.val_records, core.val_records, taus, max_nat_drop)
        if tau is not None:
            out.append(_Composable(m, SelectorSpec("SR", tau)))
    return out


def _adaptive_for(adaptive: dict[str, pd.DataFrame], c: _Composable) -> pd.DataFrame | None:
    a = adaptive.get(c.model.name)
    if a is None:
        return None
    if "selector" not in a.columns:
        raise DataError(f"adaptive records of {c.model.name} lack the 'selector' column")
    d = a[a["selector"] == c.spec.name]
    if not len(d):
        raise DataError(f"adaptive records of {c.model.name} hold no rows for {c.spec.name} (they hold "
                        f"{sorted(set(a['selector']))}): re-run the adaptive stage (dvc repro)")
    return d


def _composition_row(c: _Composable, core: ModelInfo, adaptive: dict[str, pd.DataFrame],
                     seed: int) -> dict[str, Any]:
    sel = c.spec.selection(c.model.records)
    adv = _adaptive_for(adaptive, c)
    pts = composition_outcome(c.model.records, core.records, sel, adv)
    row: dict[str, Any] = {"name": c.name, "model": c.model.name, "loss": c.model.loss,
                           "beta": _beta(c.model.beta), "role": c.model.role, "selector": c.spec.kind,
                           "tau": float("nan") if c.spec.tau is None else c.spec.tau,
                           "selected": sel.selection_rate, "rob_sel": sel.robust_selection,
                           "rob_acc_sound": float(pts["rob_acc_sound"].mean()),
                           "rob_acc_rule": float(pts["rob_acc_rule"].mean()),
                           "rob_acc_adaptive": float(pts["rob_acc_adaptive"].mean()) if adv is not None
                           else float("nan"),
                           "n_fooled": int(pts["fooled"].sum()),
                           "n_overcounted": int((pts["rob_acc_rule"] & ~pts["rob_acc"]).sum()),
                           "core_nat_acc": float(pts["core_acc"].mean()),
                           "core_rob_acc": float(pts["core_rob_acc"].mean())}
    _with_ci(row, "nat_acc", pts["h_correct"].to_numpy())
    _with_ci(row, "rob_acc", pts["rob_acc"].to_numpy())
    _with_diff(row, "d_nat_acc", pts["h_correct"].to_numpy(), pts["core_acc"].to_numpy(), seed)
    _with_diff(row, "d_rob_acc", pts["rob_acc"].to_numpy(), pts["core_rob_acc"].to_numpy(), seed)
    row["gap"] = row["rob_acc_rule"] - row["rob_acc"]
    return row


def _val_candidates(comps: list[_Composable]) -> list[Candidate]:
    return [Candidate(c.name, c.model.val_records, c.spec.selection(c.model.val_records))
            for c in comps]


def _cascade_rows(models: list[ModelInfo], core: ModelInfo, taus: np.ndarray, max_nat_drop: float,
                  max_cascade: int, seed: int) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Greedy cascade search on validation over every ERI and SR(tau) selector; the chain and the
    best single composition it is compared with are then scored on test (sound rule)."""
    specs: dict[str, tuple[ModelInfo, SelectorSpec]] = {}
    cands = []
    for m in models:
        if m.role == "core" or m.val_records is None:
            continue
        ss = [SelectorSpec("ERI")]
        if has_softmax_response(m.val_records):
            ss += [SelectorSpec("SR", float(t)) for t in taus]
        for s in ss:
            c = _Composable(m, s)
            specs[c.name] = (m, s)
            cands.append(Candidate(c.name, m.val_records, s.selection(m.val_records), {"model": m.name}))
    res = best_cascade(cands, core.val_records, max_nat_drop, "sound", max_cascade)
    rows, outcomes = [], []
    for label, chain in (("best 2-composition (chosen on val)", [res["best_single"]["name"]]),
                         ("greedy cascade (chosen on val)", res["chain"])):
        ms = [specs[n] for n in chain]
        pts = cascade_points([m.records for m, _ in ms], core.records,
                             [s.selection(m.records) for m, s in ms])
        core_pts = _masks(core.records)
        row: dict[str, Any] = {"label": label, "chain": " → ".join(chain)}
        _with_ci(row, "nat_acc", pts["h_correct"].to_numpy())
        _with_ci(row, "rob_acc", pts["rob_acc_sound"].to_numpy())
        row["d_nat_acc"] = row["nat_acc"] - float(core_pts["nat_acc"].mean())
        row["d_rob_acc"] = row["rob_acc"] - float(core_pts["rob_acc_1x"].mean())
        rows.append(row)
        outcomes.append(pts["rob_acc_sound"].to_numpy())
    diff = paired_diff_ci(outcomes[1], outcomes[0], seed=seed)
    verdict = (f"Cascade minus best single on test (sound R_rob^acc): {tables.dci(*diff.as_tuple())} "
               f"points (paired 95 % interval); on validation the cascade "
               f"{'beats' if res['beats_single'] else 'does not beat'} the best single.")
    summary = {"length": len(res["chain"]), "nat_acc": rows[1]["nat_acc"], "rob_acc": rows[1]["rob_acc"],
               "rob_acc_lo": rows[1]["rob_acc_lo"], "rob_acc_hi": rows[1]["rob_acc_hi"],
               "gain": diff.value, "gain_lo": diff.lo, "gain_hi": diff.hi}
    return rows, verdict, summary


def _headline_keys(prefix: str, row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for k in keys:
        for suffix in ("", "_lo", "_hi"):
            v = row.get(f"{k}{suffix}")
            if v is not None and not (isinstance(v, float) and not np.isfinite(v)):
                out[f"{prefix}/{k}{suffix}"] = v
    return out


_COMP_KEYS = ("nat_acc", "rob_acc", "rob_acc_sound", "rob_acc_rule", "rob_acc_adaptive", "d_nat_acc",
              "d_rob_acc")


def _compositions(models: list[ModelInfo], core: ModelInfo, headline: ModelInfo | None,
                  mdf: pd.DataFrame, adaptive: dict[str, pd.DataFrame], eps: float, head: str,
                  out: Path, taus: np.ndarray, max_nat_drop: float, max_cascade: int,
                  seed: int) -> dict[str, Any]:
    """compositions.md, adaptive.md, figures/compositions.png; returns their headline metrics."""
    if core.val_records is None:
        raise DataError("the core model has no validation records: compositions are chosen on them")
    comps = _composables(models, core, taus, max_nat_drop)
    if not comps:
        return {}
    unknown = sorted(set(adaptive) - {c.model.name for c in comps})
    if unknown:
        raise ParamError(f"adaptive records name no composed model: {unknown}")
    rows = [_composition_row(c, core, adaptive, seed) for c in comps]
    cdf = pd.DataFrame(rows)
    core_row = mdf[mdf["name"] == core.name].iloc[0]
    core_hl = {"eps": eps, "name": f"{core.name} (core)", "d_rob_acc": None, "d_nat_acc": None,
               **{k: core_row[f"rob_acc_1x{s}"] for k, s in (("rob_acc", ""), ("rob_acc_lo", "_lo"),
                                                               ("rob_acc_hi", "_hi"))},
               **{k: core_row[k] for k in ("nat_acc", "nat_acc_lo", "nat_acc_hi")}}
    best = best_composition(_val_candidates(comps), core.val_records, max_nat_drop)
    best_row = next(r for r in rows if r["name"] == best["name"])
    hl = [core_hl]
    metrics: dict[str, Any] = {}
    if headline is not None:
        h = next((r for r in rows if r["model"] == headline.name and r["selector"] == "ERI"), None)
        if h is not None:
            hl.append({**h, "eps": eps, "name": f"{h['name']} (headline)"})
            metrics.update(_headline_keys("headline_composition", h, _COMP_KEYS))
    hl.append({**best_row, "eps": eps,
               "name": f"{best_row['name']} (best on val{'' if best['feasible'] else ', infeasible'})"})
    metrics.update(_headline_keys("best_composition", best_row, _COMP_KEYS))
    metrics["best_composition/feasible"] = best["feasible"]
    casc_rows, verdict, casc = _cascade_rows(models, core, taus, max_nat_drop, max_cascade, seed)
    metrics.update({f"best_cascade/{k}": v for k, v in casc.items()})
    text = ("# Compositions with the core model (12)\n\n" + head
            + "R_rob^acc (headline) is the **sound** score (H(x) = y and H robust on B_ε(x): robustly "
              "selected and the robust model robust-accurate at ε, or both models robust-accurate "
              "at ε) AND the end-to-end adaptive attack on H did not fool H: the lowest of the "
              "evidence. The paper's rule is kept as a labelled comparison column. Intervals: exact "
              "95 % (rates), paired bootstrap 95 % over test points (Δ against the core).\n\n"
            + f"Chosen on **validation** records (training split), reported on test: each SR τ "
              f"(best sound R_rob^acc losing at most {100 * max_nat_drop:g} points of R_nat against "
              "the core, `report.max_nat_drop`), the best composition (same criterion over all "
              "rows below), the cascade.\n\n"
            + "## Core vs compositions (Table 1/5 analog)\n\n" + tables.headline_table(hl)
            + "\n## Every composition: S_ERI, and S_SR at the τ chosen on validation\n\n"
            + tables.compositions_table(cdf)
            + f"\n## Cascades (greedy along the validation Pareto front, sound rule)\n\n"
            + tables.cascade_table(casc_rows, verdict)
            + "\nCascades are scored by the sound rule from the records only (no adaptive attack), "
              "so a 2-composition may read a little higher here than in the tables above.\n")
    save_text(text, out / "compositions.md")
    core_pt = {"name": core.name, "nat_acc": core_hl["nat_acc"], "rob_acc": core_hl["rob_acc"]}
    save_figure(figures.compositions(cdf, core_pt, mdf[mdf["role"] != "core"]),
                out / "figures" / "compositions.png")
    attacked = [r for r in rows if np.isfinite(r["rob_acc_adaptive"])]
    if attacked:
        save_text("# Paper's rule vs sound score vs adaptive attack on H\n\n" + head
                  + "Every composition of the reports (S_ERI and S_SR at the τ chosen on "
                    "validation) attacked end to end (robust_abstain.adaptive: both branches, the "
                    "selector's own attack at the point found). Adaptive: the rule's point, H(x) = y "
                    "and the attack found no x' in B_ε(x) with H(x') ≠ y. Headline: sound and not "
                    "fooled (the lowest).\n\n" + tables.adaptive_table(attacked), out / "adaptive.md")
        for r in attacked:
            metrics.update({f"adaptive/{r['name']}/rob_acc_rule": r["rob_acc_rule"],
                            f"adaptive/{r['name']}/rob_acc_sound": r["rob_acc_sound"],
                            f"adaptive/{r['name']}/rob_acc_adaptive": r["rob_acc_adaptive"],
                            f"adaptive/{r['name']}/rob_acc": r["rob_acc"]})
    return metrics


# ---------------------------------------------------------------------------------- certified
def _cert_masks(df: pd.DataFrame, r1: float, r2: float) -> dict[str, np.ndarray]:
    d = M.by_index(df)
    out = {"nat_acc": (d["smooth_pred"] == d["label"]).to_numpy()}
    for tag, r in (("r1", r1), ("r2", r2)):
        out.update({f"{k}_{tag}": v for k, v in M.certified_masks(d, r).items()})
    return out


def _certified(certified: list[ModelInfo], certified_core: pd.DataFrame | None, r1: float,
               out: Path, seed: int) -> dict[str, Any]:
    r2 = 2 * r1
    rows, curves, metrics = [], {}, {}
    rmax = max([r2 * 1.25] + [float(m.records["cert_radius"].max()) for m in certified])
    radii = np.linspace(0.0, rmax, 101)
    masks = {m.name: _cert_masks(m.records, r1, r2) for m in certified}
    for m in certified:
        row: dict[str, Any] = {"name": m.name, "loss": m.loss, "beta": _beta(m.beta)}
        for k, v in masks[m.name].items():
            _with_ci(row, k, v)
        for rule in ("sound", "paper"):
            a = certified_abstain_metrics(m.records, cri(m.records, r1, rule))
            row.update({f"rob_sel_{rule}": a["rob_sel"], f"rob_acc_on_sel_{rule}": a["rob_acc_on_sel"]})
        rows.append(row)
        curves[m.name] = (radii, M.certified_accuracy_curve(m.records, radii))
        p = f"certified/{m.name}/"
        for k, mk in (("nat_acc", "nat_acc"), ("rob_acc", "rob_acc_r1"), ("rob_inacc", "rob_inacc_r1"),
                      ("rob_acc_2x", "rob_acc_r2"), ("rob_inacc_2x", "rob_inacc_r2")):
            metrics.update({p + k: row[mk], p + k + "_lo": row[mk + "_lo"], p + k + "_hi": row[mk + "_hi"]})
        metrics.update({p + "rob_sel_sound": row["rob_sel_sound"], p + "rob_sel_paper": row["rob_sel_paper"]})
    diffs = []
    refs = [m for m in certified if m.loss == "noise" and m.role == "sweep"]
    for m in certified:
        for ref in refs if m.loss == "cra" else []:
            row = {"name": m.name, "reference": ref.name}
            for k in ("rob_acc_r1", "rob_inacc_r1", "rob_acc_r2", "rob_inacc_r2"):
                _with_diff(row, f"d_{k}", masks[m.name][k], masks[ref.name][k], seed)
            diffs.append(row)
            metrics.update({f"certified/{m.name}-{ref.name}/d_{k}{s}": row[f"d_{k}{s}"]
                            for k in ("rob_acc_r1", "rob_inacc_r1") for s in ("", "_lo", "_hi")})
    text = ("# Certified models (Table 2 analog)\n\n"
            + f"Randomized smoothing, L2 radii r1 = {r1:g}, r2 = {r2:g}; {len(certified[0].records)} "
              "test points; percent with exact 95 % intervals.\n"
            + "S_CRI robust selection: [sound] certified radius ≥ 2ε (Appendix A.3); "
              "[paper] radius ≥ ε as the paper counts it (optimistic).\n\n"
            + tables.certified_table(pd.DataFrame(rows), r1, r2))
    if diffs:
        text += ("\n## CRA against noise fine-tuning (paired differences, 95 % paired bootstrap)\n\n"
                 + tables.certified_diff_table(diffs, r1, r2))
    if certified_core is not None:
        comp = []
        for m in certified:
            sel = cri(m.records, r1, "sound")
            pts = {k: v.to_numpy() for k, v in
                   certified_composition_outcome(m.records, certified_core, sel).items()}
            row = {"name": f"{m.name}+CRI", "rob_acc_rule": float(pts["rob_acc_rule"].mean()),
                   "rob_acc_certified": float(pts["rob_acc_certified"].mean()),
                   "rob_sel": sel.robust_selection}
            _with_ci(row, "nat_acc", pts["h_correct"])
            _with_ci(row, "rob_acc", pts["rob_acc"])
            _with_diff(row, "d_nat_acc", pts["h_correct"], pts["core_acc"], seed)
            _with_diff(row, "d_rob_acc", pts["rob_acc"], pts["core_rob_acc"], seed)
            comp.append(row)
            metrics.update(_headline_keys(f"certified/{m.name}/composition", row,
                                          ("nat_acc", "rob_acc", "d_nat_acc", "d_rob_acc")))
        c0 = {"core_nat_acc": float(pts["core_acc"].mean()), "core_rob_acc": float(pts["core_rob_acc"].mean())}
        text += ("\n\n## Compositions with the core model (12), certified selector S_CRI at ε = "
                 f"{r1:g}\n\nCore model (L2 APGD at ε): natural {100 * c0['core_nat_acc']:.1f} %, "
                 f"robust {100 * c0['core_rob_acc']:.1f} %. R_rob^acc (sound): robustly selected "
                 "(radius ≥ 2ε) and G certified correct, or G certified correct at ε and the core "
                 "robust-accurate at ε; no adaptive attack applies (G is certified on the ball). The "
                 "paper's rule (radius ≥ ε counts as robustly selected, else the core) is kept for "
                 "comparison; `certified part` counts only certified robust-accurate points.\n\n"
                 + tables.certified_compositions_table(comp))
    save_text(text, out / "certified.md")
    save_figure(figures.certified_curves(curves, (r1, r2)), out / "figures" / "certified_accuracy.png")
    return metrics


# ---------------------------------------------------------------------------------- the report
def _check_records(models: list[ModelInfo], columns: list[str], kind: str) -> None:
    """Unique names, the schema's columns, and the same test (and validation) points for every model."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ParamError(f"{kind}model names must be unique, got {names}")
    for m in models:
        check(m.records, columns, f"{kind}records of {m.name}")
        if m.val_records is not None:
            check(m.val_records, columns, f"{kind}validation records of {m.name}")
    M.align(*[m.records for m in models], names=names)
    val = [m for m in models if m.val_records is not None]
    if val:
        M.align(*[m.val_records for m in val], names=[f"{m.name} (val)" for m in val])


def _round(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        if isinstance(v, (float, np.floating)):
            v = None if not np.isfinite(v) else round(float(v), 4)
        elif isinstance(v, np.integer):
            v = int(v)
        out[k] = v
    return out


def build_report(models: list[ModelInfo], out_dir: str | os.PathLike, eps: float,
                 certified: list[ModelInfo] | None = None,
                 adaptive: dict[str, pd.DataFrame] | None = None, *,
                 cert_eps: float | None = None, certified_core: pd.DataFrame | None = None,
                 max_nat_drop: float = 0.01, taus: np.ndarray | None = None, max_cascade: int = 4,
                 seed: int = 0, seed_runs: list[ModelInfo] | None = None,
                 seeds: list[int] | None = None,
                 seed_adaptive: list[pd.DataFrame] | None = None) -> dict[str, Any]:
    """Write the Markdown tables and PNG figures (module docstring) and return the headline metrics.

    ``models``: empirical records of every model (same test points; validation records on the same
    validation points), at most one ``core`` and one ``headline``. ``eps``: the threat model's
    radius (records' ``1x``). ``certified``: smoothed models' certified records (radii r1 =
    ``cert_eps`` (default ``eps``) and r2 = 2 * r1). ``adaptive``: adaptive-attack records
    (adaptive.adaptive_records: index, selector, h_adv_wrong) keyed by model name.
    ``max_nat_drop``: the natural accuracy a composition may lose against the core to count as
    best (fraction, judged on validation). ``taus``: the SR threshold grid (default 0 ... 0.99).
    ``seed``: the paired bootstrap's seed. ``seed_runs``: the headline run trained with each of
    ``seeds`` (training seeds; the first is the ``headline`` model itself), for the seed spread.

    Metric keys (fractions rounded to 4 decimals; ``_lo`` / ``_hi``: 95 % interval):
    ``n``; ``{core,base,headline}/{nat_acc,rob_acc,rob_inacc,rob_acc_2x,rob_inacc_2x}[_lo,_hi]``;
    ``headline/{rob_sel,rob_acc_on_sel}`` (S_ERI abstain model);
    ``{headline,best}_composition/{nat_acc,rob_acc,rob_acc_sound,rob_acc_rule,rob_acc_adaptive,
    d_nat_acc,d_rob_acc}[_lo,_hi]``; ``best_composition/feasible``;
    ``best_cascade/{length,nat_acc,rob_acc[_lo,_hi],gain[_lo,_hi]}``;
    ``adaptive/<composition>/{rob_acc_rule,rob_acc_sound,rob_acc_adaptive,rob_acc}``;
    ``vs_trades/<model>/{d_rob_acc_1x,d_rob_inacc_1x,d_rob_inacc_2x}[_lo,_hi]``;
    ``certified/<name>/...`` and ``certified/<cra>-<noise>/d_...``."""
    if not models:
        raise ParamError("build_report needs at least one model")
    if not np.isfinite(eps) or eps <= 0:
        raise ParamError(f"eps must be finite and > 0, got {eps!r}")
    _check_records(models, EMPIRICAL_COLUMNS, "")
    core, headline, base = _one(models, "core"), _one(models, "headline"), _one(models, "base")
    adaptive = adaptive or {}
    if adaptive and core is None:
        raise ParamError("adaptive records need a core model (role 'core') to compose with")
    taus = TAU_GRID if taus is None else np.asarray(taus, dtype=float)
    out = Path(out_dir)
    metrics: dict[str, Any] = {"n": int(len(models[0].records))}
    head = f"Threat model: ε = {eps:g} (robust selection uses 2ε = {2 * eps:g}, Appendix A.3); " \
           f"{metrics['n']} test points. Numbers in percent, [95 % interval].\n\n"

    # -- per-model metrics -------------------------------------------------------------------
    mdf = model_metrics(models)
    pairs = matched_pairs(models, seed)
    summary = "# Robust accuracy and robust inaccuracy\n\n" + head + tables.summary_table(mdf)
    if pairs:
        summary += ("\n## Against TRADES at matched robust accuracy\n\nEach fine-tuned model against "
                    "the TRADES fine-tune (same budget) whose R_rob^acc at ε on **validation** is closest; "
                    "Δ = this model "
                    "minus TRADES on test, paired bootstrap 95 % interval over test points.\n\n"
                    + tables.matched_table(pairs))
        for r in pairs:
            metrics.update(_headline_keys(f"vs_trades/{r['name']}", r,
                                          ("d_rob_acc_1x", "d_rob_inacc_1x", "d_rob_inacc_2x")))
    if seed_runs:
        if seeds is None or len(seeds) != len(seed_runs):
            raise ParamError(f"seed_runs need one training seed each, got {seeds!r}")
        sdf, smetrics = seed_spread(seed_runs, core, seeds, seed_adaptive)
        metrics.update(smetrics)
        summary += ("\n## Seed spread of the headline run\n\nThe headline fine-tune trained with each "
                    "training seed of `seeds` (the first is the headline above; a seed also draws the "
                    "fine-tune's training subset, so the spread includes data-subset variance); "
                    "the composition is S_ERI with the core, headline score (sound, adaptive).\n\n" + tables.seeds_table(sdf))
        if len(sdf) == 1:
            summary += "\nOne seed: set `seeds: [0, 1, 2]` in params.yaml to measure the spread.\n"
    save_text(summary, out / "summary.md")
    save_text("# Robust / accurate splits (Tables 7/8 analog)\n\n" + head
              + "The four columns of each row sum to 100 %.\n\n" + tables.splits_table(mdf),
              out / "splits.md")
    for role, m in (("core", core), ("base", base), ("headline", headline)):
        if m is None:
            continue
        r = mdf[mdf["name"] == m.name].iloc[0]
        for k, mk in (("nat_acc", "nat_acc"), ("rob_acc", "rob_acc_1x"), ("rob_inacc", "rob_inacc_1x"),
                      ("rob_acc_2x", "rob_acc_2x"), ("rob_inacc_2x", "rob_inacc_2x")):
            metrics.update({f"{role}/{k}{s}": r[f"{mk}{s}"] for s in ("", "_lo", "_hi")})

    # -- abstain models ------------------------------------------------------------------------
    curve, table = _abstain(models, taus)
    if len(curve):
        save_text("# Abstain models (F answers where S selects)\n\n" + head
                  + "R_rob^sel: the selector is 1 on all of B_ε(x) (F robust on B_2ε(x) for ERI, by "
                    "every attack run; for SR also every attack's lowest confidence at 2ε ≥ τ). "
                    "The SR τ is matched to ERI's R_rob^sel on validation records.\n\n"
                  + tables.abstain_table(table), out / "abstain.md")
        save_figure(figures.selection_pareto(curve), out / "figures" / "selection_pareto.png")
    if headline is not None and len(table):
        e = table[(table["model"] == headline.name) & (table["selector"] == "ERI")].iloc[0]
        metrics.update({"headline/rob_sel": e["rob_sel"], "headline/rob_acc_on_sel": e["rob_acc_on_sel"]})
    save_figure(figures.rob_acc_vs_rob_inacc(mdf, eps), out / "figures" / "rob_acc_vs_rob_inacc.png")

    # -- compositions and the adaptive attack --------------------------------------------------------
    if core is not None:
        metrics.update(_compositions(models, core, headline, mdf, adaptive, eps, head, out, taus,
                                     max_nat_drop, max_cascade, seed))

    # -- certified -----------------------------------------------------------------------------------
    if certified:
        r1 = float(eps if cert_eps is None else cert_eps)
        if not np.isfinite(r1) or r1 <= 0:
            raise ParamError(f"cert_eps must be finite and > 0, got {cert_eps!r}")
        _check_records(certified, CERTIFIED_COLUMNS, "certified ")
        metrics.update(_certified(certified, certified_core, r1, out, seed))
    return _round(metrics)
