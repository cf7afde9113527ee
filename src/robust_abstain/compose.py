"""Compositions (12) and cascades of robust models with an accurate core model, from records.

(12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x)

Natural accuracy of H is exact from the records: at the clean x, H answers with F_robust where
S(x) = 1 (``Selection.selected``) and with F_core elsewhere.

Robust accuracy of H cannot be read off single-model records exactly; two evaluation rules are
offered, both computed per point (see :func:`compose_points`):

``sound`` (the headline score)
    H(x) = y, and: x robustly selected (S(x') = 1 on all of B_eps(x)) and F_robust robust-accurate
    at eps; or **both** F_robust and F_core robust-accurate at eps, because S(x') may take either
    value in B_eps(x) and records cannot show that S robustly abstains. Given the attacks' verdicts
    (records.robust: every attack run) H(x') = y on all of B_eps(x), so this is a sound score.
``paper`` (the paper's evaluation rule; an estimate, not a bound; a labelled comparison column)
    x robustly selected -> robust-accurate iff F_robust is accurate and robust at eps; otherwise
    -> robust-accurate iff F_core is accurate and robust at eps. It over-counts where S is not
    robustly 1 but flips to 1 somewhere in B_eps(x) (H may then answer with a wrong
    F_robust(x')), including x itself when S(x) = 1, F_robust(x) != y and x is not robustly
    selected: then H(x) != y, yet the rule credits the core.

An adaptive end-to-end attack on H (adaptive.py, its own stage) adds per-point evidence:
:func:`compose_adaptive` with the schema :data:`ADAPTIVE_COLUMNS` reports rule, sound and adaptive
side by side and headlines the lowest (sound AND not fooled by the attack).

Cascades (the paper's future work): a chain of robust models F_1, ..., F_K with selectors
S_1, ..., S_K ending in F_core; x goes to the first F_k whose S_k selects it. The same two rules
generalise (:func:`cascade`); a 2-composition is the cascade of length 1.

Every choice among compositions (:func:`best_composition`, :func:`best_cascade`, a threshold tau)
is meant to be made on **validation** records and then scored on test records (see report/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import DataError, ParamError
from .metrics import by_index
from .records import CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, certified_robust, check, robust
from .selectors import Selection, pareto_front

RULES = ("sound", "paper")

#: Adaptive-attack evidence on a composition H (one CSV per composition, one row per test point):
#:   index        test-set index of the point
#:   h_adv_wrong  bool: the adaptive attack found x' in B_eps(x) with H(x') != y
#: Optional columns (kept, not used here): h_adv_pred (H(x') at the attack's point).
#: Rows are required for every point the paper's rule counts as robust-accurate (the sound score
#: counts a subset of them, and only counted points can lose); other points may be missing.
ADAPTIVE_COLUMNS = ["index", "h_adv_wrong"]


@dataclass(frozen=True, eq=False)
class Candidate:
    """A robust model (its empirical records) with the selector that routes points to it."""

    name: str
    records: pd.DataFrame
    selection: Selection
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- per point
@dataclass(frozen=True)
class _Arrays:
    """One model's records as numpy arrays, sorted by index (computed once, reused in searches)."""

    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    acc: np.ndarray    # F(x) = y
    racc: np.ndarray   # F(x) = y and F robust on B_eps(x)


def _arrays(df: pd.DataFrame, name: str) -> _Arrays:
    d = by_index(check(df, EMPIRICAL_COLUMNS, name), name)
    acc = accurate(d)
    return _Arrays(d["index"].to_numpy(), d["label"].to_numpy(), d["pred"].to_numpy(), acc,
                   acc & robust(d, 1))


def _check_same_points(arrs: Sequence[_Arrays], names: Sequence[str]) -> None:
    ref = arrs[-1]
    for a, n in zip(arrs, names):
        if len(a.index) != len(ref.index) or not np.array_equal(a.index, ref.index):
            raise DataError(f"{n} and the core records cover different test points "
                            f"({len(a.index)} vs {len(ref.index)} rows)")
        if not np.array_equal(a.label, ref.label):
            raise DataError(f"{n} and the core records disagree on labels")


def _outcome(arrs: Sequence[_Arrays], sels: Sequence[Selection]) -> dict[str, np.ndarray]:
    """Per-point cascade outcome; ``arrs`` = robust models then the core (last), all aligned."""
    K, n = len(sels), len(arrs[-1].index)
    acc = np.stack([a.acc for a in arrs])     # (K+1, n)
    racc = np.stack([a.racc for a in arrs])

    def first(rows: list[np.ndarray]) -> np.ndarray:  # first True row, K if none
        return np.vstack(rows + [np.ones(n, dtype=bool)]).argmax(0)

    stage = first([s.selected for s in sels])
    rstage = first([s.robustly_selected for s in sels])
    cols = np.arange(n)
    upto = np.arange(K + 1)[:, None] <= rstage[None, :]
    h_correct = acc[stage, cols]
    return {"stage": stage, "robust_stage": rstage,
            "h_pred": np.stack([a.pred for a in arrs])[stage, cols],
            "h_correct": h_correct,
            "rob_acc_paper": racc[rstage, cols],
            "rob_acc_sound": h_correct & np.all(racc | ~upto, axis=0)}


def _prepare(models: Sequence[pd.DataFrame], core_df: pd.DataFrame,
             selections: Sequence[Selection]) -> tuple[list[_Arrays], list[Selection]]:
    if len(models) == 0:
        raise ParamError("a cascade needs at least one robust model")
    if len(models) != len(selections):
        raise ParamError(f"{len(models)} models but {len(selections)} selectors")
    names = [f"model #{k + 1}" for k in range(len(models))]
    arrs = [_arrays(m, n) for m, n in zip(models, names)] + [_arrays(core_df, "core records")]
    _check_same_points(arrs, names + ["core records"])
    index = arrs[-1].index
    return arrs, [s.aligned_to(index) for s in selections]


def cascade_points(models: Sequence[pd.DataFrame], core_df: pd.DataFrame,
                   selections: Sequence[Selection]) -> pd.DataFrame:
    """Per-point outcome of the cascade F_1 -> ... -> F_K -> F_core (K >= 1; K = 1 is (12)).

    Columns: ``index``, ``label``, ``h_pred`` (H(x) at the clean point), ``h_correct``,
    ``stage`` (0-based index of the model answering x, K for the core),
    ``robust_stage`` (first model that robustly selects x, K if none),
    ``rob_acc_sound`` and ``rob_acc_paper`` (the two rules of the module docstring):
        sound: H(x) = y and every model at stages 0 ... robust_stage (the core included when no
               model robustly selects x) is accurate and robust at eps, since any earlier
               selector may flip to 1 somewhere in B_eps(x);
        paper: the model at ``robust_stage`` is accurate and robust at eps."""
    arrs, sels = _prepare(models, core_df, selections)
    o = _outcome(arrs, sels)
    cols = ["h_pred", "h_correct", "stage", "robust_stage", "rob_acc_sound", "rob_acc_paper"]
    return pd.DataFrame({"index": arrs[-1].index, "label": arrs[-1].label, **{c: o[c] for c in cols}})


def compose_points(robust_df: pd.DataFrame, core_df: pd.DataFrame,
                   selection: Selection) -> pd.DataFrame:
    """Per-point outcome of the composition (12); columns as :func:`cascade_points`. The adaptive
    attack can use ``rob_acc_paper`` to attack only the points the rule counts."""
    return cascade_points([robust_df], core_df, [selection])


# ---------------------------------------------------------------------------------- metrics
def _summarise(o: dict[str, np.ndarray], core: _Arrays, K: int) -> dict[str, Any]:
    core_nat, core_rob = float(core.acc.mean()), float(core.racc.mean())
    out: dict[str, Any] = {
        "n": int(len(core.index)),
        "nat_acc": float(o["h_correct"].mean()),
        "rob_acc": float(o["rob_acc_sound"].mean()),
        "rob_acc_rule": float(o["rob_acc_paper"].mean()),
        "core_nat_acc": core_nat,
        "core_rob_acc": core_rob,
    }
    out["d_nat_acc"] = out["nat_acc"] - core_nat
    out["d_rob_acc"] = out["rob_acc"] - core_rob
    out["routed"] = [float((o["stage"] == k).mean()) for k in range(K + 1)]
    out["robustly_routed"] = [float((o["robust_stage"] == k).mean()) for k in range(K)]
    return out


def _cascade_metrics(arrs: Sequence[_Arrays], sels: Sequence[Selection]) -> dict[str, Any]:
    return _summarise(_outcome(arrs, sels), arrs[-1], len(sels))


def _single(m: dict[str, Any]) -> dict[str, Any]:
    m = dict(m)
    m["selected"] = m["routed"][0]
    m["rob_sel"] = m["robustly_routed"][0]
    del m["routed"], m["robustly_routed"]
    return m


def compose_rule(robust_df: pd.DataFrame, core_df: pd.DataFrame,
                 selection: Selection) -> dict[str, Any]:
    """The composition (12) H = S F_robust + (1 - S) F_core, scored from records.

    Keys: ``nat_acc`` (R_nat of H, exact), ``rob_acc`` (R_rob^acc, sound score),
    ``rob_acc_rule`` (the paper's rule), ``selected`` (P[S(x) = 1]), ``rob_sel``
    (R_rob^sel), ``core_nat_acc``, ``core_rob_acc``, ``d_nat_acc``, ``d_rob_acc`` (H minus core),
    ``n``."""
    arrs, sels = _prepare([robust_df], core_df, [selection])
    return _single(_cascade_metrics(arrs, sels))


def _adaptive_wrong(adaptive_df: pd.DataFrame, index: np.ndarray, need: np.ndarray) -> np.ndarray:
    check(adaptive_df, ADAPTIVE_COLUMNS, "adaptive records")
    a = by_index(adaptive_df, "adaptive records").set_index("index")["h_adv_wrong"]
    extra = set(a.index.tolist()) - set(index.tolist())
    if extra:
        raise DataError(f"adaptive records hold test points the records lack, e.g. {sorted(extra)[:5]}")
    a = a.reindex(index)
    missing = need & a.isna().to_numpy()
    if missing.any():
        raise DataError(f"adaptive records lack {int(missing.sum())} points the rule counts as "
                        f"robust-accurate, e.g. index {index[missing][:5].tolist()}")
    return np.array([_as_bool(v) for v in a.to_numpy()], dtype=bool)


def _as_bool(v: Any) -> bool:
    """A ``h_adv_wrong`` cell: bool, 0/1, or 'True'/'False' text from a CSV; missing -> False
    (only allowed for points the rule does not count)."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return False
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("true", "1", "1.0", "yes"):
            return True
        if t in ("false", "0", "0.0", "no", ""):
            return False
        raise DataError(f"adaptive records: h_adv_wrong must be a bool, got {v!r}")
    return bool(v)


def compose_adaptive(robust_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection,
                     adaptive_df: pd.DataFrame) -> dict[str, Any]:
    """The composition (12) scored three ways side by side, and headlined by the lowest.

    Per point (:func:`composition_outcome`): ``rule`` (the paper's rule), ``sound`` (module
    docstring), ``adaptive`` = rule AND H(x) = y AND NOT h_adv_wrong (the end-to-end attack on H,
    schema :data:`ADAPTIVE_COLUMNS`), and the headline ``rob_acc`` = sound AND NOT h_adv_wrong (the
    per-point worst case of all evidence). Keys: those of :func:`compose_rule` (``rob_acc`` replaced
    by the headline) plus ``rob_acc_sound``, ``rob_acc_adaptive``, ``gap`` (rule minus headline,
    >= 0) and ``n_overcounted`` (points the rule counts that the headline refutes)."""
    out = compose_rule(robust_df, core_df, selection)
    pts = composition_outcome(robust_df, core_df, selection, adaptive_df)
    out["rob_acc_sound"] = out["rob_acc"]
    out["rob_acc_adaptive"] = float(pts["rob_acc_adaptive"].mean())
    out["rob_acc"] = float(pts["rob_acc"].mean())
    out["d_rob_acc"] = out["rob_acc"] - out["core_rob_acc"]
    out["gap"] = out["rob_acc_rule"] - out["rob_acc"]
    out["n_overcounted"] = int((pts["rob_acc_rule"] & ~pts["rob_acc"]).sum())
    return out


def composition_outcome(robust_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection,
                        adaptive_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-point outcome of (12) for intervals and paired differences: columns ``index``,
    ``h_correct``, ``rob_acc`` (headline: sound AND not fooled by the adaptive attack, or sound
    without adaptive evidence), ``rob_acc_sound``, ``rob_acc_rule``, ``rob_acc_adaptive`` (rule AND
    H(x) = y AND not fooled; without adaptive evidence nothing counts as fooled), ``fooled``, ``core_acc``, ``core_rob_acc`` (the core alone, robust-accurate at eps)."""
    arrs, sels = _prepare([robust_df], core_df, [selection])
    o = _outcome(arrs, sels)
    rule = o["rob_acc_paper"]
    wrong = (np.zeros_like(rule) if adaptive_df is None
             else _adaptive_wrong(adaptive_df, arrs[-1].index, rule))
    return pd.DataFrame({"index": arrs[-1].index, "h_correct": o["h_correct"],
                         "rob_acc": o["rob_acc_sound"] & ~wrong, "rob_acc_sound": o["rob_acc_sound"],
                         "rob_acc_rule": rule, "rob_acc_adaptive": rule & o["h_correct"] & ~wrong,
                         "fooled": wrong, "core_acc": arrs[-1].acc, "core_rob_acc": arrs[-1].racc})


def cascade(models: Sequence[pd.DataFrame], core_df: pd.DataFrame,
            selections: Sequence[Selection]) -> dict[str, Any]:
    """A cascade F_1 -> ... -> F_K -> F_core, ordered from the most robust-selective model.

    At the clean x, x goes to the first F_k with S_k(x) = 1, else to F_core (natural accuracy,
    exact). Robust accuracy by two rules (see :func:`cascade_points`):
        ``rob_acc`` (sound): H(x) = y and every model up to and including the first robustly
            selecting one (and the core if none does) is robust-accurate at eps.
        ``rob_acc_rule`` ("paper" rule analog, an estimate like the paper's): x goes to the first
            F_k that robustly selects it; being not robustly selected by an earlier model counts
            as "moves on", although the records cannot prove that the earlier selector robustly
            abstains. Robust-accurate iff that model (or the core) is robust-accurate at eps.
    Further keys: ``nat_acc``, ``routed`` (share answered at the clean point by each stage, core
    last), ``robustly_routed`` (share robustly selected first by each model), ``core_*``, ``d_*``."""
    arrs, sels = _prepare(models, core_df, selections)
    return _cascade_metrics(arrs, sels)


# ---------------------------------------------------------------------------------- search
def _rule_key(rule: str) -> str:
    if rule not in RULES:
        raise ParamError(f"rule must be one of {list(RULES)}, got {rule!r}")
    return "rob_acc" if rule == "sound" else "rob_acc_rule"


def _score(m: dict[str, Any], key: str, max_nat_drop: float | None) -> tuple:
    feasible = max_nat_drop is None or m["nat_acc"] >= m["core_nat_acc"] - max_nat_drop - 1e-12
    return (bool(feasible), round(m[key], 12), round(m["nat_acc"], 12))


class _Cache:
    """Arrays and aligned selections of the candidates, computed once per search."""

    def __init__(self, candidates: Sequence[Candidate], core_df: pd.DataFrame):
        self.core = _arrays(core_df, "core records")
        by_id: dict[int, _Arrays] = {}
        self.arrs, self.sels = [], []
        for c in candidates:
            if id(c.records) not in by_id:
                by_id[id(c.records)] = _arrays(c.records, f"records of {c.name}")
                _check_same_points([by_id[id(c.records)], self.core], [f"records of {c.name}", "core"])
            self.arrs.append(by_id[id(c.records)])
            self.sels.append(c.selection.aligned_to(self.core.index))

    def abstain(self, i: int) -> tuple[float, float]:
        """(R_rob^sel, robust accuracy on selected) of candidate i's abstain model."""
        rs = self.sels[i].robustly_selected
        sel = float(rs.mean())
        return sel, (float((rs & self.arrs[i].racc).mean()) / sel if sel > 0 else float("nan"))

    def metrics(self, chain: Sequence[int]) -> dict[str, Any]:
        return _cascade_metrics([self.arrs[i] for i in chain] + [self.core],
                                [self.sels[i] for i in chain])


def _best_single(cache: _Cache, n: int, key: str, max_nat_drop: float | None) -> tuple:
    best = None
    for i in range(n):
        m = cache.metrics([i])
        s = _score(m, key, max_nat_drop)
        if best is None or s > best[0]:
            best = (s, i, m)
    return best


def best_composition(candidates: Sequence[Candidate], core_df: pd.DataFrame,
                     max_nat_drop: float | None = 0.01, rule: str = "sound") -> dict[str, Any]:
    """The 2-composition (12) with the highest robust accuracy (by ``rule``) among those losing at
    most ``max_nat_drop`` natural accuracy against the core (None: no constraint); if none meets
    the constraint, the best overall, with ``feasible = False``. Ties: higher natural accuracy,
    then the earlier candidate. Keys: ``name``, ``candidate``, ``metrics`` (as
    :func:`compose_rule`), ``feasible``."""
    if not candidates:
        raise ParamError("best_composition needs at least one candidate")
    key = _rule_key(rule)
    s, i, m = _best_single(_Cache(candidates, core_df), len(candidates), key, max_nat_drop)
    return {"name": candidates[i].name, "candidate": candidates[i], "metrics": _single(m),
            "feasible": s[0]}


def best_cascade(candidates: Sequence[Candidate], core_df: pd.DataFrame,
                 max_nat_drop: float | None = 0.01, rule: str = "sound",
                 max_length: int = 4) -> dict[str, Any]:
    """Greedy cascade search along the Pareto front, compared with the best 2-composition.

    1. The front: candidates whose abstain model is Pareto-optimal in (R_rob^sel, robust accuracy
       on selected) (Figure 3), e.g. the beta sweep's ERI selectors and SR thresholds.
    2. Start from the best single 2-composition over **all** candidates (:func:`best_composition`).
    3. Repeatedly insert the front candidate (of a model not yet in the chain; ``info["model"]``,
       else the name, identifies the model) at the position that most improves the score
       (feasible under ``max_nat_drop``, then robust accuracy by ``rule``, then natural accuracy);
       stop when nothing improves or the chain has ``max_length`` models.
    Keys: ``chain`` (names), ``metrics`` (:func:`cascade`), ``best_single`` (name, metrics,
    feasible), ``feasible``, ``beats_single`` (bool), ``gain`` (robust-accuracy gain over the best
    single, by ``rule``), ``rule``, ``front`` (names)."""
    if not candidates:
        raise ParamError("best_cascade needs at least one candidate")
    key = _rule_key(rule)
    if max_length < 1:
        raise ParamError(f"max_length must be >= 1, got {max_length}")
    cache = _Cache(candidates, core_df)
    score, i0, m0 = _best_single(cache, len(candidates), key, max_nat_drop)
    single_metrics, single_feasible = m0, score[0]
    front = pareto_front([cache.abstain(i) for i in range(len(candidates))])
    model_of = [c.info.get("model", c.name) for c in candidates]
    chain, metrics = [i0], m0
    while len(chain) < max_length:
        used = {model_of[i] for i in chain}
        best = None
        for j in front:
            if model_of[j] in used:
                continue
            for pos in range(len(chain) + 1):
                trial = chain[:pos] + [j] + chain[pos:]
                m = cache.metrics(trial)
                s = _score(m, key, max_nat_drop)
                if best is None or s > best[0]:
                    best = (s, trial, m)
        if best is None or not best[0] > score:
            break
        score, chain, metrics = best
    gain = metrics[key] - single_metrics[key]
    return {"chain": [candidates[i].name for i in chain], "metrics": metrics,
            "best_single": {"name": candidates[i0].name, "metrics": _single(single_metrics),
                            "feasible": single_feasible},
            "feasible": score[0], "beats_single": bool(len(chain) > 1 and gain > 1e-12),
            "gain": float(gain), "rule": rule, "front": [candidates[i].name for i in front]}


# ---------------------------------------------------------------------------------- certified
def certified_composition_outcome(cert_df: pd.DataFrame, core_df: pd.DataFrame,
                                  selection: Selection) -> pd.DataFrame:
    """Per-point outcome of :func:`compose_certified`, sorted by index: columns ``index``,
    ``h_correct``, ``rob_acc`` (sound), ``rob_acc_rule``, ``rob_acc_certified``, ``core_acc``,
    ``core_rob_acc`` (the core alone, robust-accurate at eps)."""
    cert = by_index(check(cert_df, CERTIFIED_COLUMNS, "certified records"), "certified records")
    core = by_index(check(core_df, EMPIRICAL_COLUMNS, "core records"), "core records").set_index("index")
    idx = cert["index"].to_numpy()
    missing = sorted(set(idx.tolist()) - set(core.index.tolist()))
    if missing:
        raise DataError(f"core records lack certified test points, e.g. {missing[:5]}")
    core = core.loc[idx].reset_index()
    sel = selection.aligned_to(idx)
    g_ok = cert["cert_pred"].to_numpy() == cert["label"].to_numpy()
    c_ok = accurate(core)
    c_rob = c_ok & robust(core, 1)
    eps = float(selection.params["eps"])
    nat = np.where(sel.selected, g_ok, c_ok)
    certified_part = certified_robust(cert, 2 * eps) & g_ok
    return pd.DataFrame({"index": idx, "h_correct": nat,
                         "rob_acc": nat & (certified_part | (certified_robust(cert, eps) & g_ok & c_rob)),
                         "rob_acc_rule": np.where(certified_robust(cert, eps), g_ok, c_rob),
                         "rob_acc_certified": certified_part, "core_acc": c_ok, "core_rob_acc": c_rob})


def compose_certified(cert_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection) -> dict[str, Any]:
    """(12) with the certified selector S_CRI (11): H(x) = G(x) where S_CRI(x) = 1, else F_core(x).

    ``cert_df``: certified records of the smoothed model G; ``core_df``: the core model's empirical
    records under the same L2 threat model (APGD), covering at least the certified points.
    ``nat_acc``: H at the clean x (G's certified class where selected). With eps the selection's
    radius and the sound robust selection (certified radius >= 2 eps, Appendix A.3):
        ``rob_acc`` (sound): H(x) = y, and either x robustly selected and G certified correct, or
            G certified correct at radius eps (right on all of B_eps(x)) **and** F_core
            robust-accurate at eps (empirical, L2 APGD), so whichever branch S takes at x' in
            B_eps(x), H(x') = y. No adaptive attack applies: G is certified on the ball, the only
            uncertified part is F_core's own robustness, which the core's attack measures.
        ``rob_acc_rule`` (the paper's rule): certified radius >= eps counts as robustly selected
            and then G certified correct; otherwise F_core robust-accurate at eps.
        ``rob_acc_certified``: robustly selected (radius >= 2 eps) and G certified correct, a
            lower bound that holds whatever the attack.
    Keys also: ``selected``, ``rob_sel``, ``core_nat_acc``, ``core_rob_acc``, ``d_nat_acc``,
    ``d_rob_acc``, ``n``."""
    pts = certified_composition_outcome(cert_df, core_df, selection)
    out: dict[str, Any] = {"nat_acc": pts["h_correct"].mean(), "rob_acc": pts["rob_acc"].mean(),
                           "rob_acc_rule": pts["rob_acc_rule"].mean(),
                           "rob_acc_certified": pts["rob_acc_certified"].mean(),
                           "selected": selection.selection_rate, "rob_sel": selection.robust_selection,
                           "core_nat_acc": pts["core_acc"].mean(), "core_rob_acc": pts["core_rob_acc"].mean()}
    out = {k: float(v) for k, v in out.items()}
    out["n"] = int(len(pts))
    out["d_nat_acc"] = out["nat_acc"] - out["core_nat_acc"]
    out["d_rob_acc"] = out["rob_acc"] - out["core_rob_acc"]
    return out
