"""The report: per-sample records in, Markdown tables + PNG figures out, headline metrics returned.

Nothing here attacks a model: every number is computed from records (records.py) by metrics.py,
selectors.py and compose.py. :func:`build_report` writes, under ``out_dir``::

    summary.md         R_nat (1), R_rob^acc (1), R_rob^-acc (2) per model at eps and 2 eps
    splits.md          Tables 7/8 analog: the four robust/accurate splits at eps and 2 eps
    abstain.md         abstain models: S_ERI per model, S_SR at matched robust selection
    compositions.md    Table 1/5 analog (core vs compositions), every ERI composition, the best
                       SR composition per model, the greedy cascade          [needs a core model]
    adaptive.md        rule vs adaptive attack on compositions               [``adaptive`` given]
    certified.md       Table 2 analog (noise vs CRA, S_CRI sound/paper rule) [``certified`` given]
    figures/rob_acc_vs_rob_inacc.png   Figure 2 analog
    figures/selection_pareto.png       Figure 3 analog
    figures/compositions.png           Figure 4 analog                       [needs a core model]
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
from ..compose import (Candidate, best_cascade, best_composition, compose_adaptive, compose_certified,
                       compose_many)
from ..errors import ParamError
from ..io import save_figure, save_text
from ..records import CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, check
from ..selectors import (TAU_GRID, abstain_metrics_many, certified_abstain_metrics, cri, eri,
                         has_softmax_response, softmax_response, softmax_response_sweep)
from . import figures, tables

ROLES = ("core", "base", "sweep", "headline")


@dataclass
class ModelInfo:
    """One model's records for the report.

    ``name``: unique label; ``loss``: training loss ("std", "trades", "era", "mart", "dga",
    "noise", "cra", ...); ``beta``: the loss's beta (None for core/base); ``role``:
    "core" (accurate standard model), "base" (robust model before fine-tuning), "sweep" (a point of
    the beta sweep), "headline" (the ``loss.beta`` run); ``records``: empirical records (or
    certified records for the ``certified`` list)."""

    name: str
    loss: str
    beta: float | None
    role: str
    records: pd.DataFrame

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


def model_metrics(models: list[ModelInfo]) -> pd.DataFrame:
    """One row per model: name, loss, beta, role, nat_acc and, for s in (1x, 2x), rob_acc_s,
    rob_inacc_s, nonrob_acc_s, nonrob_inacc_s (fractions)."""
    rows = []
    for m in models:
        row: dict[str, Any] = {"name": m.name, "loss": m.loss, "beta": _beta(m.beta), "role": m.role}
        for scale in (1, 2):
            s = M.summary(m.records, scale)
            row["nat_acc"] = s["nat_acc"]
            for k in M.SPLIT_KEYS:
                row[f"{k}_{scale}x"] = s[k]
        rows.append(row)
    return pd.DataFrame(rows)


def _candidates(models: list[ModelInfo], taus: np.ndarray) -> tuple[list[Candidate], pd.DataFrame]:
    """ERI and SR(tau) candidates for every non-core model, and their abstain metrics."""
    cands, rows = [], []
    for m in models:
        if m.role == "core":
            continue
        sels = [eri(m.records)]
        if has_softmax_response(m.records):
            sels += softmax_response_sweep(m.records, taus)
        for s, am in zip(sels, abstain_metrics_many(m.records, sels)):
            kind = "ERI" if s.name == "ERI" else "SR"
            info = {"model": m.name, "loss": m.loss, "beta": _beta(m.beta), "role": m.role,
                    "selector": kind, "tau": s.params.get("tau", float("nan"))}
            cands.append(Candidate(f"{m.name}+{s.name}", m.records, s, info))
            rows.append({**info, **am})
    return cands, pd.DataFrame(rows)


def _abstain_rows(adf: pd.DataFrame) -> pd.DataFrame:
    """ERI per model, and SR at the tau whose R_rob^sel is closest to ERI's (matched selection)."""
    out = []
    for model in dict.fromkeys(adf["model"].tolist()):
        d = adf[adf["model"] == model]
        e = d[d["selector"] == "ERI"].iloc[0]
        out.append({**e.to_dict(), "selector": "ERI"})
        sr = d[d["selector"] == "SR"]
        if len(sr):
            j = (sr["rob_sel"] - e["rob_sel"]).abs().to_numpy().argmin()
            r = sr.iloc[j].to_dict()
            out.append({**r, "selector": f"SR τ={r['tau']:.2f} (matched R_rob^sel)"})
    return pd.DataFrame(out)


def _resolve_adaptive(key: str, by_name: dict[str, ModelInfo]) -> tuple[ModelInfo, Any]:
    """Adaptive keys: '<model>' or '<model>+ERI' (S_ERI) or '<model>+SR@<tau>' (S_SR)."""
    name, _, sel = key.partition("+")
    if name not in by_name:
        raise ParamError(f"adaptive record '{key}' names no model of the report ({sorted(by_name)})")
    m = by_name[name]
    if sel in ("", "ERI"):
        return m, eri(m.records)
    if sel.startswith("SR@"):
        try:
            tau = float(sel[3:])
        except ValueError:
            raise ParamError(f"adaptive record '{key}': cannot read tau from '{sel}'") from None
        return m, softmax_response(m.records, tau)
    raise ParamError(f"adaptive record '{key}': selector must be ERI or SR@<tau>, got '{sel}'")


def _check_records(models: list[ModelInfo], columns: list[str], kind: str) -> None:
    """Unique names, the schema's columns, and the same test points for every model."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ParamError(f"{kind}model names must be unique, got {names}")
    for m in models:
        check(m.records, columns, f"{kind}records of {m.name}")
    M.align(*[m.records for m in models], names=names)


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
                 max_nat_drop: float = 0.01,
                 taus: np.ndarray | None = None, cascade_rule: str = "paper",
                 max_cascade: int = 4) -> dict[str, Any]:
    """Write the Markdown tables and PNG figures (module docstring) and return the headline metrics.

    ``models``: empirical records of every model (same test points), at most one ``core`` and one
    ``headline``. ``eps``: the threat model's radius (records' ``1x``). ``certified``: smoothed
    models' certified records (radii r1 = ``cert_eps`` (default ``eps``) and r2 = 2 * r1).
    ``adaptive``: adaptive-attack records (schema ``compose.ADAPTIVE_COLUMNS``) keyed by the
    composition: '<model>' / '<model>+ERI' or '<model>+SR@<tau>'. ``max_nat_drop``: the natural
    accuracy a composition may lose against the core to count as best (fraction). ``taus``: the SR
    threshold grid (default 0 ... 0.99).

    Metric keys (fractions rounded to 4 decimals; present when the role/input exists):
    ``n``; ``{core,base,headline}/{nat_acc,rob_acc,rob_inacc,rob_acc_2x,rob_inacc_2x}``;
    ``headline/{rob_sel,rob_acc_on_sel}`` (S_ERI abstain model);
    ``headline_composition/{nat_acc,rob_acc,rob_acc_conservative,d_nat_acc,d_rob_acc}``;
    ``best_composition/{nat_acc,rob_acc,rob_acc_conservative,d_nat_acc,d_rob_acc,feasible}``;
    ``best_cascade/{nat_acc,rob_acc,rob_acc_conservative,length,beats_single,gain}``;
    ``adaptive/<key>/{rob_acc_rule,rob_acc_adaptive,gap}``;
    ``certified/<name>/{nat_acc,rob_acc,rob_inacc,rob_acc_2x,rob_inacc_2x,rob_sel_sound,
    rob_acc_on_sel_sound,rob_sel_paper,rob_acc_on_sel_paper}``."""
    if not models:
        raise ParamError("build_report needs at least one model")
    if not np.isfinite(eps) or eps <= 0:
        raise ParamError(f"eps must be finite and > 0, got {eps!r}")
    _check_records(models, EMPIRICAL_COLUMNS, "")
    core, headline, base = _one(models, "core"), _one(models, "headline"), _one(models, "base")
    if adaptive and core is None:
        raise ParamError("adaptive records need a core model (role 'core') to compose with")
    taus = TAU_GRID if taus is None else np.asarray(taus, dtype=float)
    out = Path(out_dir)
    figdir = out / "figures"
    metrics: dict[str, Any] = {"n": int(len(models[0].records))}
    head = f"Threat model: ε = {eps:g} (robust selection uses 2ε = {2 * eps:g}, Appendix A.3); " \
           f"{metrics['n']} test points. Numbers in percent.\n\n"

    # -- per-model metrics -------------------------------------------------------------------
    mdf = model_metrics(models)
    save_text("# Robust accuracy and robust inaccuracy\n\n" + head + tables.summary_table(mdf),
              out / "summary.md")
    save_text("# Robust / accurate splits (Tables 7/8 analog)\n\n" + head
              + "The four columns of each row sum to 100 %.\n\n" + tables.splits_table(mdf),
              out / "splits.md")
    for role, m in (("core", core), ("base", base), ("headline", headline)):
        if m is None:
            continue
        r = mdf[mdf["name"] == m.name].iloc[0]
        metrics.update({f"{role}/nat_acc": r["nat_acc"], f"{role}/rob_acc": r["rob_acc_1x"],
                        f"{role}/rob_inacc": r["rob_inacc_1x"], f"{role}/rob_acc_2x": r["rob_acc_2x"],
                        f"{role}/rob_inacc_2x": r["rob_inacc_2x"]})

    # -- abstain models ------------------------------------------------------------------------
    cands, adf = _candidates(models, taus)
    if len(adf):
        save_text("# Abstain models (F answers where S selects)\n\n" + head
                  + "R_rob^sel: the selector is 1 on all of B_ε(x) (F robust on B_2ε(x) for ERI; "
                    "APGD-conf at 2ε kept F(x) and confidence ≥ τ for SR).\n\n"
                  + tables.abstain_table(_abstain_rows(adf)), out / "abstain.md")
        save_figure(figures.selection_pareto(adf), figdir / "selection_pareto.png")
    if headline is not None and len(adf):
        e = adf[(adf["model"] == headline.name) & (adf["selector"] == "ERI")].iloc[0]
        metrics.update({"headline/rob_sel": e["rob_sel"], "headline/rob_acc_on_sel": e["rob_acc_on_sel"]})
    save_figure(figures.rob_acc_vs_rob_inacc(mdf, eps), figdir / "rob_acc_vs_rob_inacc.png")

    # -- compositions ----------------------------------------------------------------------------
    if core is not None and cands:
        cdf = pd.DataFrame([{"name": c.name, **c.info, **r}
                            for c, r in zip(cands, compose_many(cands, core.records))])
        core_row = mdf[mdf["name"] == core.name].iloc[0]
        core_pt = {"name": core.name, "nat_acc": core_row["nat_acc"], "rob_acc": core_row["rob_acc_1x"]}
        best = best_composition(cands, core.records, max_nat_drop)
        hl = [{"eps": eps, "name": f"{core.name} (core)", "rob_acc": core_pt["rob_acc"],
               "nat_acc": core_pt["nat_acc"], "d_rob_acc": None, "d_nat_acc": None}]
        if headline is not None:
            h = cdf[(cdf["model"] == headline.name) & (cdf["selector"] == "ERI")].iloc[0]
            hl.append({"eps": eps, "name": f"{h['name']} (headline)", **h[["rob_acc", "nat_acc",
                       "d_rob_acc", "d_nat_acc"]].to_dict()})
            metrics.update({f"headline_composition/{k}": h[k] for k in
                            ("nat_acc", "rob_acc", "rob_acc_conservative", "d_nat_acc", "d_rob_acc")})
        bm = best["metrics"]
        hl.append({"eps": eps, "name": f"{best['name']} (best{'' if best['feasible'] else ', infeasible'})",
                   **{k: bm[k] for k in ("rob_acc", "nat_acc", "d_rob_acc", "d_nat_acc")}})
        metrics.update({f"best_composition/{k}": bm[k] for k in
                        ("nat_acc", "rob_acc", "rob_acc_conservative", "d_nat_acc", "d_rob_acc")})
        metrics["best_composition/feasible"] = best["feasible"]
        casc = best_cascade(cands, core.records, max_nat_drop, cascade_rule, max_cascade)
        cm = casc["metrics"]
        metrics.update({"best_cascade/nat_acc": cm["nat_acc"], "best_cascade/rob_acc": cm["rob_acc"],
                        "best_cascade/rob_acc_conservative": cm["rob_acc_conservative"],
                        "best_cascade/length": len(casc["chain"]),
                        "best_cascade/beats_single": casc["beats_single"],
                        "best_cascade/gain": casc["gain"]})
        eri_df = cdf[cdf["selector"] == "ERI"]
        sr_best = []
        for model in dict.fromkeys(cdf.loc[cdf["selector"] == "SR", "model"].tolist()):
            sub = [c for c in cands if c.info["model"] == model and c.info["selector"] == "SR"]
            b = best_composition(sub, core.records, max_nat_drop)
            sr_best.append({"name": b["name"] + ("" if b["feasible"] else " (infeasible)"),
                            **b["metrics"]})
        text = ("# Compositions with the core model (12)\n\n" + head
                + f"Best = highest R_rob^acc (paper's rule) losing at most {100 * max_nat_drop:g} "
                  "points of R_nat against the core.\n\n"
                + "## Core vs compositions (Table 1/5 analog)\n\n" + tables.headline_table(hl)
                + "\n## Robustness-indicator compositions (S_ERI)\n\n"
                + "Rule: the paper's evaluation rule (robustly selected -> robust model "
                  "robust-accurate at ε, else core robust-accurate at ε). Conservative: points not "
                  "robustly selected count only if robust model and core are both robust-accurate."
                  "\n\n" + tables.compositions_table(eri_df))
        if sr_best:
            text += ("\n## Softmax-response compositions (S_SR, best τ per model)\n\n"
                     + tables.compositions_table(pd.DataFrame(sr_best)))
        text += (f"\n## Cascades (greedy along the Pareto front, {cascade_rule} rule)\n\n"
                 + tables.cascade_table(casc))
        save_text(text, out / "compositions.md")
        save_figure(figures.compositions(cdf, core_pt, mdf[mdf["role"] != "core"]),
                    figdir / "compositions.png")

        # -- adaptive attack on compositions -------------------------------------------------------
        if adaptive:
            by_name = {m.name: m for m in models}
            arows = []
            for key in sorted(adaptive):
                m, sel = _resolve_adaptive(key, by_name)
                r = compose_adaptive(m.records, core.records, sel, adaptive[key])
                arows.append({"name": f"{m.name}+{sel.name}", **r})
                metrics.update({f"adaptive/{key}/rob_acc_rule": r["rob_acc"],
                                f"adaptive/{key}/rob_acc_adaptive": r["rob_acc_adaptive"],
                                f"adaptive/{key}/gap": r["gap"]})
            save_text("# Paper's rule vs adaptive attack on H\n\n" + head
                      + "Adaptive: rule robust-accurate, H(x) = y and the adaptive attack found no "
                        "x' in B_ε(x) with H(x') ≠ y.\n\n" + tables.adaptive_table(arows),
                      out / "adaptive.md")

    # -- certified -----------------------------------------------------------------------------------
    if certified:
        r1 = float(eps if cert_eps is None else cert_eps)
        if not np.isfinite(r1) or r1 <= 0:
            raise ParamError(f"cert_eps must be finite and > 0, got {cert_eps!r}")
        r2 = 2 * r1
        _check_records(certified, CERTIFIED_COLUMNS, "certified ")
        crow, curves = [], {}
        rmax = max([r2 * 1.25] + [float(m.records["cert_radius"].max()) for m in certified])
        radii = np.linspace(0.0, rmax, 101)
        for m in certified:
            s1, s2 = M.certified_summary(m.records, r1), M.certified_summary(m.records, r2)
            row = {"name": m.name, "loss": m.loss, "beta": _beta(m.beta), "nat_acc": s1["nat_acc"],
                   "rob_acc_r1": s1["rob_acc"], "rob_inacc_r1": s1["rob_inacc"],
                   "rob_acc_r2": s2["rob_acc"], "rob_inacc_r2": s2["rob_inacc"]}
            for rule in ("sound", "paper"):
                a = certified_abstain_metrics(m.records, cri(m.records, r1, rule))
                row.update({f"rob_sel_{rule}": a["rob_sel"], f"rob_acc_on_sel_{rule}": a["rob_acc_on_sel"],
                            f"rob_acc_{rule}": a["rob_acc"]})
            crow.append(row)
            curves[m.name] = (radii, M.certified_accuracy_curve(m.records, radii))
            p = f"certified/{m.name}/"
            metrics.update({p + "nat_acc": row["nat_acc"], p + "rob_acc": row["rob_acc_r1"],
                            p + "rob_inacc": row["rob_inacc_r1"], p + "rob_acc_2x": row["rob_acc_r2"],
                            p + "rob_inacc_2x": row["rob_inacc_r2"],
                            p + "rob_sel_sound": row["rob_sel_sound"],
                            p + "rob_acc_on_sel_sound": row["rob_acc_on_sel_sound"],
                            p + "rob_sel_paper": row["rob_sel_paper"],
                            p + "rob_acc_on_sel_paper": row["rob_acc_on_sel_paper"]})
        cert_text = ("# Certified models (Table 2 analog)\n\n"
                  + f"Randomized smoothing, L2 radii r1 = {r1:g}, r2 = {r2:g}; "
                    f"{len(certified[0].records)} test points; percent.\n"
                  + "S_CRI robust selection: [sound] certified radius ≥ 2ε (Appendix A.3); "
                    "[paper] radius ≥ ε as the paper counts it (optimistic).\n\n"
                  + tables.certified_table(pd.DataFrame(crow), r1, r2))
        comp_md = ""
        if certified_core is not None:
            comp = []
            for m in certified:
                for rule in ("sound", "paper"):
                    c = compose_certified(m.records, certified_core, cri(m.records, r1, rule))
                    comp.append({"name": f"{m.name}+CRI[{rule}]", **c})
                    if rule == "sound":
                        metrics.update({f"certified/{m.name}/composition_{k}": c[k] for k in
                                        ("nat_acc", "rob_acc", "rob_acc_certified", "d_nat_acc", "d_rob_acc")})
            core_c = comp[0]
            comp_md = ("\n\n## Compositions with the core model (12), certified selector S_CRI at ε = "
                       f"{r1:g}\n\nCore model (L2 APGD at ε): natural {100 * core_c['core_nat_acc']:.1f} %, "
                       f"robust {100 * core_c['core_rob_acc']:.1f} %. `R_rob^acc` uses the paper's rule "
                       "(certified where robustly selected, else the core's empirical robust accuracy); "
                       "`certified part` counts only certified robust-accurate points.\n\n"
                       + tables.markdown(
                           ["composition", "R_nat", "ΔR_nat", "R_rob^acc (rule)", "ΔR_rob^acc",
                            "certified part", "R_rob^sel"],
                           [[c["name"], tables.pct(c["nat_acc"]), tables.pp(c["d_nat_acc"]),
                             tables.pct(c["rob_acc"]), tables.pp(c["d_rob_acc"]),
                             tables.pct(c["rob_acc_certified"]), tables.pct(c["rob_sel"])] for c in comp]))
        save_text(cert_text + comp_md, out / "certified.md")
        save_figure(figures.certified_curves(curves, (r1, r2)), figdir / "certified_accuracy.png")

    return _round(metrics)


__all__ = ["ModelInfo", "ROLES", "build_report", "model_metrics"]
