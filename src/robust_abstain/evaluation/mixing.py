"""Training-free mixing baselines (:mod:`robust_abstain.models.mixing`) as per-sample records: the
choice of MixedNUTS's parameters on validation points, and APGD-CE through each mixture of a
small front, end to end.

**Choosing (s, p, c) and alpha** (MixedNUTS's ``calc_spca.py``, on our validation points): attack
the robust model alone with APGD-CE against the label y at eps, and keep the transformed robust
probabilities' margin ``m = top1 - top2`` of softmax(M(f_robust)) on two sets: the attacked points
it still classifies correctly (A) and the clean points it misclassifies (W). For a target beta (the
fraction of A the mixture is to keep: their ``target_rob_beta`` / 100) and each (s, p, c) of the
grid, the cutoff is the (1 - beta) quantile of m on A (linear interpolation, numpy's default) and
the objective the fraction of W with m >= cutoff (mistakes the robust model makes so confidently
that the core cannot overrule them: lower is better). The grid point of least objective wins
(ties: the highest cutoff, i.e. the most weight on the core, MixedNUTS's "1 - alpha should not be
tiny"; then grid order), with ``alpha = 1 / (1 + cutoff)``: a point whose transformed margin is >= (1 - alpha) / alpha keeps the
robust model's prediction whatever the core says, since the core's probabilities differ by at most
1. The ``"raw"`` gradient surrogate's ``grad_alpha`` is the same rule applied to the untransformed
softmax (their linear mixing's alpha; they take it at their linear mixing's own default beta, we
at the same beta). Simplifications: their 8 x 8 x 8 grid from per-model initial ranges is the
params' grid; AutoAttack is APGD-CE; the points are validation points, not test points.

**Records**: for each front point (method, alpha) the standard empirical records
(:data:`robust_abstain.analysis.records.EMPIRICAL_COLUMNS`) of the mixture, with the evaluate list
(APGD-CE first) at eps only against the mixed prediction F(x) (the columns of 2 eps and of
APGD-conf hold -1 / NaN: "not run"), so ``records.robust(df, 1)`` is "no attack changed F(x)".
MixedNUTS is attacked through
each gradient view of ``mixing.attack_views`` in turn, the worst case over them (the exact
gradient is blind to a one-hot core; which surrogate is stronger depends on the models and beta).
All front points of a split go to one frame with two leading columns ``method`` (``linear``
or ``nuts``) and ``alpha``; select one point before ``records.by_index`` / ``align``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.records import ABSTAIN, EMPIRICAL_COLUMNS
from ..attacks import APGD, ATTACKS, eval_mode
from ..attacks.common import model_device
from ..errors import DataError, ParamError
from ..params import Section, choice, count, number, positive, probability
from ..models.mixing import ATTACK_VIEWS, CORE_PROBS, LinearMix, NutsMix, nuts_transform
from ..parallel import by_set, chunks, piece_seed, pmap, set_pieces
from .empirical import EvaluateConfig, PointSet, attack_list, natural

#: the numerically safe ceiling of a cutoff (MixedNUTS's own: 1 - alpha must not vanish)
MAX_CUTOFF = 1 - 1e-9


@dataclass(frozen=True)
class MixingConfig(Section):
    """The ``mixing`` params section.

    ``alphas``: the linear-mixing front (0 is the core, 1 the robust model); ``betas``: the
    MixedNUTS front, each a target fraction of the robust model's robust-accurate choice points the
    mixture keeps; ``s_grid``, ``p_grid``, ``c_grid``: the grid MixedNUTS's parameters are chosen
    from; ``n_choose``: the first validation points the choice is made on (at most
    ``evaluate.n_val_points``); ``core_probs``: see :class:`NutsMix`; ``attack_views``: the
    gradient views (:class:`NutsMix`'s ``attack_view``) MixedNUTS is attacked through, in turn
    (a point is robust only if none changed F(x));
    ``seed``: the choice attack's APGD seed (the records' attacks use ``evaluate.seed``)."""

    alphas: list[float]
    betas: list[float]
    s_grid: list[float]
    p_grid: list[float]
    c_grid: list[float]
    n_choose: int
    core_probs: str
    attack_views: list[str]
    seed: int

    def validate(self, prefix: str = "mixing") -> None:
        for key, check in (("alphas", probability), ("betas", _beta), ("s_grid", positive),
                           ("p_grid", positive), ("c_grid", number)):
            values = getattr(self, key)
            if not isinstance(values, list) or (not values and key != "alphas" and key != "betas"):
                raise ParamError(f"{prefix}.{key} must be a list of numbers, got {values!r}")
            for i, v in enumerate(values):
                check(v, f"{prefix}.{key}[{i}]")
            if len(set(values)) != len(values):
                raise ParamError(f"{prefix}.{key} repeats a value: {values}")
        for i, a in enumerate(self.alphas):
            if a in (0, 1):
                raise ParamError(f"{prefix}.alphas[{i}] must be strictly between 0 and 1 (0 is the core, 1 the "
                                 f"robust model: both are in the evaluate stage's records), got {a!r}")
        if not self.alphas and not self.betas:
            raise ParamError(f"{prefix}.alphas and {prefix}.betas are both empty: no front point")
        count(self.n_choose, f"{prefix}.n_choose")
        choice(self.core_probs, f"{prefix}.core_probs", CORE_PROBS)
        views = self.attack_views
        if not isinstance(views, list) or not views or len(set(views)) != len(views):
            raise ParamError(f"{prefix}.attack_views must be a non-empty list of distinct views from "
                             f"{list(ATTACK_VIEWS)}, got {views!r}")
        for i, v in enumerate(views):
            choice(v, f"{prefix}.attack_views[{i}]", ATTACK_VIEWS)
        count(self.seed, f"{prefix}.seed", min=0)


def _beta(value: object, key: str) -> float:
    v = probability(value, key)
    if v == 0:
        raise ParamError(f"{key} must be in (0, 1], got {value!r}")
    return v


# ----------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class NutsChoice:
    """MixedNUTS's parameters for one target beta, and the choice's numbers on validation."""

    beta: float
    s: float
    p: float
    c: float
    alpha: float
    grad_alpha: float       # the "raw" surrogate's alpha: linear mixing's alpha at beta
    objective: float        # fraction of W with transformed margin >= cutoff
    n_attacked_right: int   # |A|
    n_clean_wrong: int      # |W|


def prob_margin(probs: torch.Tensor) -> torch.Tensor:
    """Per row: the largest minus the second largest probability."""
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def _cutoff_and_objective(m_right: np.ndarray, m_wrong: np.ndarray, beta: float) -> tuple[float, float]:
    cutoff = min(float(np.percentile(m_right, 100 * (1 - beta))), MAX_CUTOFF)
    return cutoff, float((m_wrong >= cutoff).mean()) if len(m_wrong) else 0.0


def choose_nuts(attacked_right: torch.Tensor, clean_wrong: torch.Tensor, beta: float,
                s_grid: list[float], p_grid: list[float], c_grid: list[float]) -> NutsChoice:
    """MixedNUTS's grid search (module docstring) on the robust model's logits: ``attacked_right``
    at the attacked points it still classifies correctly (A), ``clean_wrong`` at the clean points
    it misclassifies (W). Raises :class:`DataError` when A is empty."""
    if len(attacked_right) == 0:
        raise DataError("MixedNUTS's choice needs validation points the robust model classifies "
                        "correctly under attack; there are none (raise mixing.n_choose)")
    best = None
    for s in s_grid:
        for p in p_grid:
            for c in c_grid:
                m_a = prob_margin(F.softmax(nuts_transform(attacked_right.double(), s, p, c), 1)).numpy()
                m_w = prob_margin(F.softmax(nuts_transform(clean_wrong.double(), s, p, c), 1)).numpy()
                cutoff, obj = _cutoff_and_objective(m_a, m_w, beta)
                if best is None or (obj, -cutoff) < (best[0], -best[1]):
                    best = (obj, cutoff, s, p, c)
    obj, cutoff, s, p, c = best
    lin_cutoff, _ = _cutoff_and_objective(prob_margin(F.softmax(attacked_right.double(), 1)).numpy(),
                                          np.empty(0), beta)
    return NutsChoice(beta=beta, s=s, p=p, c=c, alpha=1 / (1 + cutoff), grad_alpha=1 / (1 + lin_cutoff),
                      objective=obj, n_attacked_right=len(attacked_right), n_clean_wrong=len(clean_wrong))


def choice_logits(robust: nn.Module, x: torch.Tensor, y: torch.Tensor, ecfg: EvaluateConfig, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The robust model's logits at (A) the APGD-CE points (against y, at eps) it still classifies
    correctly and (W) the clean points it misclassifies: :func:`choose_nuts`'s inputs."""
    dev, b = model_device(robust), ecfg.batch_size
    with eval_mode(robust), torch.no_grad():
        clean = torch.cat([robust(x[i:i + b].to(dev)).cpu() for i in range(0, len(x), b)])

    def attack(k_r: tuple[int, range]) -> torch.Tensor:   # piece k with the seed of piece k
        k, r = k_r
        return APGD(robust, norm=ecfg.norm, eps=ecfg.eps, steps=ecfg.steps, restarts=ecfg.restarts,
                    objective="ce", seed=piece_seed(seed, k), batch_size=b).run(x[r.start:r.stop],
                                                                                y[r.start:r.stop])[1].cpu()
    attacked = torch.cat(pmap(attack, enumerate(chunks(len(y), b)), desc="MixedNUTS choice", device=dev))
    y = y.cpu()
    return attacked[attacked.argmax(1) == y], clean[clean.argmax(1) != y]


# ----------------------------------------------------------------------------- the front
@dataclass(frozen=True)
class FrontPoint:
    """One mixture of the front, as the modules an attack sees it through (one per gradient view;
    every one has the same output value, the mixture's)."""

    method: str                 # linear, nuts
    alpha: float
    views: tuple[nn.Module, ...]


def front(core: nn.Module, robust: nn.Module, cfg: MixingConfig, choices: list[NutsChoice]) -> list[FrontPoint]:
    """The front: linear mixing at each of ``cfg.alphas``, then MixedNUTS at each choice, through each
    of ``cfg.attack_views``. The records name a mixture by (method, alpha): a repeated one is kept
    once, and two MixedNUTS choices with one alpha but different transforms (s, p, c) are an error."""
    points: dict[tuple[str, float], FrontPoint] = {}
    for a in cfg.alphas:
        points.setdefault(("linear", float(a)), FrontPoint("linear", float(a), (LinearMix(core, robust, a),)))
    seen: dict[float, NutsChoice] = {}
    for ch in choices:
        first = seen.setdefault(ch.alpha, ch)
        if (first.s, first.p, first.c) != (ch.s, ch.p, ch.c):
            raise DataError(f"mixing.betas {first.beta} and {ch.beta} give MixedNUTS the same alpha {ch.alpha:g} "
                            f"with different transforms (s, p, c): drop one of the betas")
        views = tuple(NutsMix(core, robust, ch.alpha, ch.s, ch.p, ch.c, core_probs=cfg.core_probs,
                              attack_view=v, grad_alpha=ch.grad_alpha) for v in cfg.attack_views)
        points.setdefault(("nuts", ch.alpha), FrontPoint("nuts", ch.alpha, views))
    return list(points.values())


def eps_records(views: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                ecfg: EvaluateConfig) -> pd.DataFrame:
    """The empirical records of a model under the evaluate list (``ecfg.attacks``) at eps only,
    against F(x) (the columns of 2 eps and of APGD-conf hold -1 / NaN: "not run"). ``views``: the
    model as one or more modules with the same output and different gradients (:class:`NutsMix`'s
    ``attack_view``), attacked in turn, each on the points every earlier one left robust; each
    attack's column holds its verdict from the last view that ran it on a point, and its
    confidence the lowest any view reached, so ``records.robust(df, 1)`` is the worst case over
    every view and attack."""
    pred, conf = natural(views[0], x, ecfg.batch_size)
    prefixes = [ATTACKS[a].prefix for a in ecfg.attacks]
    out = {p: (torch.full_like(pred, ABSTAIN), torch.full_like(conf, float("nan"))) for p in prefixes}
    alive = torch.ones(len(pred), dtype=torch.bool)
    for view in views:
        at = alive.nonzero().squeeze(1)
        if len(at) == 0:
            break
        cols = attack_list(view, x[at], pred[at], ecfg.eps, ecfg.attacks, ecfg.budget(), progress=True,
                           scales=(1,))
        for p in prefixes:
            a_pred, a_conf = cols[f"{p}_pred_1x"].to(pred.device), cols[f"{p}_conf_1x"].to(conf.device)
            run = a_pred != ABSTAIN
            out[p][0][at[run]] = a_pred[run]
            out[p][1][at[run]] = torch.fmin(out[p][1][at[run]], a_conf[run])
            alive[at[run & (a_pred != pred[at])]] = False
    cols = {"index": index, "label": y, "pred": pred, "conf": conf, "eps": torch.full_like(conf, ecfg.eps)}
    for p in ["adv", "sr"] + [q for q in prefixes if q != "adv"]:
        for s in (1, 2):
            run = s == 1 and p in out
            cols[f"{p}_pred_{s}x"] = out[p][0] if run else torch.full_like(pred, ABSTAIN)
            cols[f"{p}_conf_{s}x"] = out[p][1] if run else torch.full_like(conf, float("nan"))
    df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
    return df[EMPIRICAL_COLUMNS + [c for c in df.columns if c not in EMPIRICAL_COLUMNS]]


def mixing_records(points: list[FrontPoint], sets: Mapping[str, PointSet], ecfg: EvaluateConfig
                   ) -> dict[str, pd.DataFrame]:
    """:func:`eps_records` of every front point on each set of points, one frame per set with leading
    ``method`` and ``alpha`` columns. The points are attacked in pieces of ``ecfg.batch_size``, piece
    ``k`` of each set with the seed of piece ``k`` (:func:`~..parallel.piece_seed`), spread over
    worker processes: the records do not depend on the number of workers."""
    pieces = set_pieces({name: len(ps.y) for name, ps in sets.items()}, ecfg.batch_size)
    jobs = [(j, piece) for piece in pieces for j in range(len(points))]

    def run(job: tuple[int, tuple[str, int, range]]) -> pd.DataFrame:
        j, (name, k, r) = job
        ps, at = sets[name], slice(r.start, r.stop)
        df = eps_records(points[j].views, ps.x[at], ps.y[at], ps.index[at],
                         replace(ecfg, seed=piece_seed(ecfg.seed, k)))
        df.insert(0, "alpha", points[j].alpha)
        df.insert(0, "method", points[j].method)
        return df

    done = pmap(run, jobs, desc="mixtures", device=model_device(points[0].views[0]) if points else None)
    frames = by_set([(f"{name}/{j}", k, r) for j, (name, k, r) in jobs], done)   # rows: front point, then piece
    return {name: pd.concat([d for j in range(len(points)) for d in frames[f"{name}/{j}"]], ignore_index=True)
            for name in sets}
