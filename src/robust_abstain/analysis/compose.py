"""The composition (12) of a robust model with an accurate core model, its cascades, and its scores.

(12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x)                            :func:`compose`

Everything else applies :func:`compose` to per-point records and scores H:

* :func:`composition`: (12) with an empirical selector S, from the two models' empirical records;
* :func:`cascade`: a chain F_1, ..., F_K of robust models with selectors S_1, ..., S_K ending in
  F_core, i.e. F_1 composed with (F_2 composed with (... F_core)); x goes to the first F_k whose
  S_k selects it, and a composition is the cascade of length 1;
* :func:`compose_certified`: (12) with the certified selector S_CRI (11) and the smoothed model G.

Natural accuracy of H is exact from the records: at the clean x, H answers with F_robust where
S(x) = 1 (``Selection.selected``) and with F_core elsewhere. Robust accuracy of H cannot be read
off single-model records exactly; two rules are reported per point (:class:`Outcome`):

``sound`` (the headline score)
    H(x) = y, and: x robustly selected (S(x') = 1 on all of B_eps(x)) and F_robust robust-accurate
    at eps; or **both** F_robust and F_core robust-accurate at eps, because S(x') may take either
    value in B_eps(x) and records cannot show that S robustly abstains. Given the attacks' verdicts
    (records.robust: every attack run) H(x') = y on all of B_eps(x), so this is a sound score.
``rule`` (the paper's evaluation rule; an estimate, not a bound; a labelled comparison column)
    x robustly selected -> robust-accurate iff F_robust is accurate and robust at eps; otherwise
    -> robust-accurate iff F_core is accurate and robust at eps. It over-counts where S is not
    robustly 1 but flips to 1 somewhere in B_eps(x) (H may then answer with a wrong
    F_robust(x')), including x itself when S(x) = 1, F_robust(x) != y and x is not robustly
    selected: then H(x) != y, yet the rule credits the core.

An adaptive end-to-end attack on H (evaluation/adaptive.py, its own stage) adds per-point evidence
(records.ADAPTIVE_COLUMNS): the headline is then sound AND not fooled by the attack.

Every choice among compositions (a threshold tau, the best composition, the cascade) is made on
**validation** records (choose.py) and then scored on test records (report/).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, ParamError
from .records import (CERTIFIED_COLUMNS, EMPIRICAL_COLUMNS, accurate, adaptive_fooled, by_index,
                      certified_robust, check, robust)
from .selectors import Selection

RULES = ("sound", "paper")


def compose(selected: Any, robust: Any, core: Any) -> Any:
    """(12) H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x), point by point.

    ``selected`` holds S(x) (booleans); ``robust`` and ``core`` hold what F_robust and F_core give at
    the same points: their predictions, or any per-point outcome of the two models (accurate,
    robust-accurate, the stage that answers). numpy arrays or torch tensors; scalars broadcast.

    Example::

        >>> compose(np.array([True, False]), np.array([3, 3]), np.array([5, 5]))
        array([3, 5])
    """
    if type(selected).__module__.startswith("torch"):     # the same rule on torch tensors
        import torch
        return torch.where(selected, robust, core)
    # S(x) = 1: H answers with F_robust(x); S(x) = 0: with F_core(x)
    return np.where(selected, robust, core)


@dataclass(frozen=True, eq=False)
class Outcome:
    """Per-point outcome of a composition (12) or a cascade, sorted by ``index``, and its rates.

    Per point (boolean arrays unless noted):
        ``h_pred`` (int)        H(x) at the clean point
        ``h_correct``           H(x) = y
        ``stage`` (int)         the model answering x at the clean point: 0 ... K - 1, K the core
        ``robust_stage`` (int)  the first model that robustly selects x, K if none
        ``sound``, ``rule``     H robust-accurate at x by the two rules of the module docstring
        ``core_correct``        F_core(x) = y;  ``core_robust``: F_core robust-accurate at eps
        ``fooled``              the adaptive attack found x' in B_eps(x) with H(x') != y
                                (None: no attack ran)
        ``certified``           (:func:`compose_certified` only) x robustly selected and G
                                certified correct: a lower bound whatever the attack
    ``length`` is K (1 for a composition). Rates (fractions) are properties: ``nat_acc``,
    ``rob_acc`` (the headline: sound and not fooled), ``rob_acc_sound``, ``rob_acc_rule``,
    ``rob_acc_adaptive`` (rule, H(x) = y and not fooled; NaN without an attack),
    ``rob_acc_certified``, ``core_nat_acc``, ``core_rob_acc``, ``d_nat_acc``, ``d_rob_acc`` (H minus
    the core), ``gap`` (rule minus headline), ``selected`` (P[S_1(x) = 1]), ``rob_sel`` (R_rob^sel
    of S_1), ``routed`` / ``robustly_routed`` (per stage)."""

    index: np.ndarray
    label: np.ndarray
    h_pred: np.ndarray
    h_correct: np.ndarray
    stage: np.ndarray
    robust_stage: np.ndarray
    sound: np.ndarray
    rule: np.ndarray
    core_correct: np.ndarray
    core_robust: np.ndarray
    length: int = 1
    fooled: np.ndarray | None = None
    certified: np.ndarray | None = None

    @property
    def headline(self) -> np.ndarray:
        """Per point: sound and not fooled by the adaptive attack."""
        return self.sound if self.fooled is None else self.sound & ~self.fooled

    @property
    def adaptive(self) -> np.ndarray:
        """Per point: the rule's verdict, H(x) = y and not fooled (nobody fooled without an attack)."""
        ok = self.rule & self.h_correct
        return ok if self.fooled is None else ok & ~self.fooled

    n = property(lambda self: int(len(self.index)))
    nat_acc = property(lambda self: _rate(self.h_correct))
    rob_acc = property(lambda self: _rate(self.headline))
    rob_acc_sound = property(lambda self: _rate(self.sound))
    rob_acc_rule = property(lambda self: _rate(self.rule))
    rob_acc_adaptive = property(lambda self: _rate(self.adaptive, self.fooled is not None))
    rob_acc_certified = property(lambda self: _rate(self.certified, self.certified is not None))
    core_nat_acc = property(lambda self: _rate(self.core_correct))
    core_rob_acc = property(lambda self: _rate(self.core_robust))
    d_nat_acc = property(lambda self: self.nat_acc - self.core_nat_acc)
    d_rob_acc = property(lambda self: self.rob_acc - self.core_rob_acc)
    gap = property(lambda self: self.rob_acc_rule - self.rob_acc)
    n_fooled = property(lambda self: 0 if self.fooled is None else int(self.fooled.sum()))
    n_overcounted = property(lambda self: int((self.rule & ~self.headline).sum()))
    routed = property(lambda self: [_rate(self.stage == k) for k in range(self.length + 1)])
    robustly_routed = property(lambda self: [_rate(self.robust_stage == k) for k in range(self.length)])
    selected = property(lambda self: _rate(self.stage == 0))
    rob_sel = property(lambda self: _rate(self.robust_stage == 0))


def _rate(mask: np.ndarray | None, measured: bool = True) -> float:
    return float(mask.mean()) if measured else float("nan")


# ---------------------------------------------------------------------------------- from records
@dataclass(frozen=True)
class ModelArrays:
    """One model's empirical records as arrays sorted by index (computed once, reused in searches)."""

    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    correct: np.ndarray          # F(x) = y
    robust_correct: np.ndarray   # F(x) = y and F robust on B_eps(x)


def model_arrays(df: pd.DataFrame, name: str) -> ModelArrays:
    d = by_index(check(df, EMPIRICAL_COLUMNS, name), name)
    ok = accurate(d)
    return ModelArrays(d["index"].to_numpy(), d["label"].to_numpy(), d["pred"].to_numpy(), ok,
                       ok & robust(d, 1))


def check_same_points(models: Sequence[ModelArrays], names: Sequence[str], core: ModelArrays) -> None:
    for m, n in zip(models, names):
        if len(m.index) != len(core.index) or not np.array_equal(m.index, core.index):
            raise DataError(f"{n} and the core records cover different test points "
                            f"({len(m.index)} vs {len(core.index)} rows)")
        if not np.array_equal(m.label, core.label):
            raise DataError(f"{n} and the core records disagree on labels")


def chain(models: Sequence[ModelArrays], selections: Sequence[Selection], core: ModelArrays) -> Outcome:
    """The cascade F_1 -> ... -> F_K -> F_core as (12) applied from the core outwards; ``models``,
    ``selections`` and ``core`` cover the same points in the same order."""
    K = len(models)
    h_pred, h_correct, stage, robust_stage = core.pred, core.correct, K, K
    rule, sound_tail = core.robust_correct, core.robust_correct
    for k in reversed(range(K)):
        m, s, rs = models[k], selections[k].selected, selections[k].robustly_selected
        # at the clean x: F_k answers where S_k(x) = 1, the rest of the chain elsewhere
        h_pred, h_correct = compose(s, m.pred, h_pred), compose(s, m.correct, h_correct)
        stage = compose(s, k, stage)
        # x robustly selected by S_k: F_k answers on all of B_eps(x); the rule credits F_k alone
        robust_stage, rule = compose(rs, k, robust_stage), compose(rs, m.robust_correct, rule)
        # S_k may take either value in B_eps(x) unless it robustly selects x: the sound score needs
        # F_k and, if S_k does not robustly select x, every later model up to the robust stage
        sound_tail = m.robust_correct & compose(rs, True, sound_tail)
    return Outcome(core.index, core.label, h_pred, h_correct, np.asarray(stage),
                   np.asarray(robust_stage), h_correct & sound_tail, rule, core.correct,
                   core.robust_correct, length=K)


def cascade(models: Sequence[pd.DataFrame], core_df: pd.DataFrame,
            selections: Sequence[Selection]) -> Outcome:
    """The cascade F_1 -> ... -> F_K -> F_core (K >= 1), ordered from the most robust-selective model.

    At the clean x, x goes to the first F_k with S_k(x) = 1, else to F_core (natural accuracy,
    exact). Robust accuracy by the two rules (module docstring):
        sound: H(x) = y and every model at stages 0 ... robust_stage (the core included when no
               model robustly selects x) is robust-accurate at eps, since any earlier selector may
               flip to 1 somewhere in B_eps(x);
        rule:  the model at ``robust_stage`` (the core if none) is robust-accurate at eps: being
               not robustly selected by an earlier model counts as "moves on", although the
               records cannot prove that the earlier selector robustly abstains.

    Example::

        >>> o = cascade([era_records, trades_records], core_records, [eri(era_records), eri(trades_records)])
        >>> o.nat_acc, o.rob_acc, o.routed          # routed: share answered by each stage, core last
    """
    if len(models) == 0:
        raise ParamError("a cascade needs at least one robust model")
    if len(models) != len(selections):
        raise ParamError(f"{len(models)} models but {len(selections)} selectors")
    names = [f"model #{k + 1}" for k in range(len(models))]
    arrays = [model_arrays(m, n) for m, n in zip(models, names)]
    core = model_arrays(core_df, "core records")
    check_same_points(arrays, names, core)
    return chain(arrays, [s.aligned_to(core.index) for s in selections], core)


def composition(robust_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection,
                adaptive_df: pd.DataFrame | None = None) -> Outcome:
    """The composition (12) H = S F_robust + (1 - S) F_core, scored from records: the cascade of
    length 1, with the adaptive attack's verdicts (``adaptive_df``, records.ADAPTIVE_COLUMNS) if
    given.

    Example::

        >>> o = composition(robust_records, core_records, eri(robust_records), adaptive_records)
        >>> o.nat_acc, o.rob_acc, o.rob_acc_rule, o.d_rob_acc      # headline, rule, vs the core
    """
    o = cascade([robust_df], core_df, [selection])
    if adaptive_df is None:
        return o
    return replace(o, fooled=adaptive_fooled(adaptive_df, o.index, o.rule))


def compose_points(robust_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """:func:`composition` per point as a frame: columns ``index``, ``label``, ``h_pred``,
    ``h_correct``, ``stage``, ``robust_stage``, ``rob_acc_sound`` and ``rob_acc_paper`` (the rule;
    the adaptive attack attacks the points it counts)."""
    o = composition(robust_df, core_df, selection)
    return pd.DataFrame({"index": o.index, "label": o.label, "h_pred": o.h_pred,
                         "h_correct": o.h_correct, "stage": o.stage, "robust_stage": o.robust_stage,
                         "rob_acc_sound": o.sound, "rob_acc_paper": o.rule})


# ---------------------------------------------------------------------------------- certified
def compose_certified(cert_df: pd.DataFrame, core_df: pd.DataFrame, selection: Selection) -> Outcome:
    """(12) with the certified selector S_CRI (11): H(x) = G(x) where S_CRI(x) = 1, else F_core(x).

    ``cert_df``: certified records of the smoothed model G; ``core_df``: the core model's empirical
    records under the same L2 threat model (APGD), covering at least the certified points; the
    outcome covers the certified points. ``h_correct``: H at the clean x (G's certified class where
    selected). With eps the selection's radius and the sound robust selection (certified radius
    >= 2 eps, Appendix A.3):
        ``sound``: H(x) = y, and either x robustly selected and G certified correct, or G certified
            correct at radius eps (right on all of B_eps(x)) **and** F_core robust-accurate at eps
            (empirical, L2 APGD), so whichever branch S takes at x' in B_eps(x), H(x') = y. No
            adaptive attack applies: G is certified on the ball, the only uncertified part is
            F_core's own robustness, which the core's attack measures.
        ``rule`` (the paper's): certified radius >= eps counts as robustly selected and then G
            certified correct; otherwise F_core robust-accurate at eps.
        ``certified``: radius >= 2 eps and G certified correct, whatever the selector's rule.

    Example::

        >>> o = compose_certified(cra_certified, core_l2_records, cri(cra_certified, 0.25))
        >>> o.nat_acc, o.rob_acc, o.rob_acc_rule, o.rob_acc_certified
    """
    cert = by_index(check(cert_df, CERTIFIED_COLUMNS, "certified records"), "certified records")
    core = by_index(check(core_df, EMPIRICAL_COLUMNS, "core records"), "core records").set_index("index")
    idx = cert["index"].to_numpy()
    missing = sorted(set(idx.tolist()) - set(core.index.tolist()))
    if missing:
        raise DataError(f"core records lack certified test points, e.g. {missing[:5]}")
    core = core.loc[idx].reset_index()
    sel = selection.aligned_to(idx)
    eps = float(selection.params["eps"])
    g_ok = cert["cert_pred"].to_numpy() == cert["label"].to_numpy()
    c_ok = accurate(core)
    c_rob = c_ok & robust(core, 1)
    # at the clean x: G answers where S_CRI(x) = 1, the core elsewhere
    h_correct = compose(sel.selected, g_ok, c_ok)
    # G right on all of B_eps(x) and S_CRI robustly 1 there (radius >= 2 eps)
    certified = certified_robust(cert, 2 * eps) & g_ok
    # or G right on all of B_eps(x) (radius >= eps) and the core robust-accurate: either branch is right
    both = certified_robust(cert, eps) & g_ok & c_rob
    return Outcome(idx, cert["label"].to_numpy(),
                   compose(sel.selected, cert["cert_pred"].to_numpy(), core["pred"].to_numpy()),
                   h_correct, np.where(sel.selected, 0, 1), np.where(sel.robustly_selected, 0, 1),
                   h_correct & (certified | both),
                   compose(certified_robust(cert, eps), g_ok, c_rob), c_ok, c_rob,
                   certified=certified)
