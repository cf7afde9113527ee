"""Attack a model once per threat model and write per-sample records (see records.py).

Guarantees: the model is in eval mode (its modes are restored afterwards); attacks stay in B_eps(x)
and [0, 1] (attacks/); robustness is tested for every point against its own prediction F(x), so
robust *inaccuracy* is measured too. The robustness attacks of the evaluate list (``attacks``,
AutoAttack's ``attacks_to_run``) run in order, at eps and then at 2 eps, each only on the points
every earlier one left robust (at 2 eps: the points robust at eps under the whole list), so the
records hold each attack's own verdict and ``records.robust`` the per-point worst case; APGD-conf
(17) runs at ``sr_scales`` on every point (softmax response needs its lowest confidence)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, NamedTuple, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.records import EMPIRICAL_COLUMNS
from ..attacks import ATTACKS, NORMS, eval_mode, worst_case_predictions
from ..attacks.autoattack import AttackBudget, attack_predictions
from ..attacks.common import model_device
from ..attacks.registry import PAPER_DEFAULT, ROBUSTNESS
from ..errors import ParamError
from ..parallel import by_set, piece_seed, pmap, set_pieces
from ..params import Section, choice, count, non_negative, scales


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """An ``evaluate`` or ``evaluate_l2`` params section: the threat model (``norm``, ``eps``), the
    robustness attacks run in order (``attacks``; APGD-CE first) and their budgets, the test points
    attacked, and the scales APGD-conf (17) runs at."""

    norm: str
    eps: float
    attacks: list[str]
    steps: int
    restarts: int
    n_points: int
    batch_size: int
    sr_scales: list[int]
    seed: int
    member_steps: int | None = None         # APGD-T and FAB-T iterations
    n_target_classes: int | None = None     # APGD-T and FAB-T: target classes tried
    square_queries: int | None = None       # Square's query budget
    n_val_points: int | None = None         # validation points (needed for the validation records)
    adaptive_push_steps: int | None = None  # PGD steps of the adaptive attack's push stages
    device: str = "auto"

    def validate(self, prefix: str = "evaluate") -> None:
        choice(self.norm, f"{prefix}.norm", NORMS)
        non_negative(self.eps, f"{prefix}.eps")
        for key in ("steps", "restarts", "n_points", "batch_size"):
            count(getattr(self, key), f"{prefix}.{key}")
        scales(self.sr_scales, f"{prefix}.sr_scales")
        count(self.seed, f"{prefix}.seed", min=0)
        check_attack_list(self.attacks, f"{prefix}.attacks")
        for key in ("n_val_points", "adaptive_push_steps", "member_steps", "n_target_classes", "square_queries"):
            if getattr(self, key) is not None:
                count(getattr(self, key), f"{prefix}.{key}")
        needs = {"member_steps": ("apgd-t", "fab-t"), "n_target_classes": ("apgd-t", "fab-t"),
                 "square_queries": ("square",)}
        for key, names in needs.items():
            used = [a for a in self.attacks if a in names]
            if used and getattr(self, key) is None:
                raise ParamError(f"{prefix} lacks ['{key}'], needed by the attacks {used}")

    def budget(self) -> AttackBudget:
        """The attack list's budgets."""
        return AttackBudget(norm=self.norm, steps=self.steps, restarts=self.restarts,
                            member_steps=self.member_steps, n_target_classes=self.n_target_classes,
                            square_queries=self.square_queries,
                            seed=self.seed, batch_size=self.batch_size)


def check_same_threat_model(strong: EvaluateConfig, ev: EvaluateConfig, strong_key: str = "evaluate_strong",
                            ev_key: str = "evaluate") -> None:
    """``strong`` adds further attacks after ``ev``'s APGD-CE, whose verdicts it reuses
    (reports/strength.md): its threat model and APGD-CE budget must be ``ev``'s, or it answers
    another question."""
    for key in ("norm", "eps", "steps", "restarts", "seed"):
        if getattr(strong, key) != getattr(ev, key):
            raise ParamError(f"{strong_key}.{key} is {getattr(strong, key)!r} but {ev_key}.{key} is "
                             f"{getattr(ev, key)!r}: the stronger attacks follow the records' own APGD-CE")


def check_attack_list(attacks: Sequence[str], key: str) -> list[str]:
    """A robustness-attack list: known names, no repeats, APGD-CE first (the paper's attack; the
    records' ``adv`` columns, which every downstream rule reads)."""
    if not isinstance(attacks, (list, tuple)) or not attacks:
        raise ParamError(f"{key} must be a non-empty list of attacks from {list(ROBUSTNESS)}, got {attacks!r}")
    for a in attacks:
        choice(a, key, ROBUSTNESS)
    if len(set(attacks)) != len(attacks):
        raise ParamError(f"{key} names an attack twice: {list(attacks)}")
    if attacks[0] != "apgd-ce":
        raise ParamError(f"{key} must start with 'apgd-ce' (the records' adv columns), got {list(attacks)}")
    return list(attacks)


def natural(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, max softmax confidence) on clean inputs, with the model in eval mode."""
    dev = model_device(model)
    with eval_mode(model), torch.no_grad():
        probs = torch.cat([F.softmax(model(x[i:i + batch_size].to(dev)), 1).cpu()
                           for i in range(0, len(x), batch_size)])
    conf, pred = probs.max(1)
    return pred, conf


def _run(model: nn.Module, name: str, x: torch.Tensor, target: torch.Tensor, radius: float,
         budget: AttackBudget, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One attack of :data:`ATTACKS` against ``target``: (prediction, confidence left to target)."""
    info = ATTACKS[name]
    if info.objective is not None:
        return worst_case_predictions(model, x, target, radius, norm=budget.norm, steps=budget.steps,
                                      restarts=budget.restarts, objective=info.objective, seed=budget.seed,
                                      batch_size=budget.batch_size, progress=progress,
                                      stop_when_fooled=info.stop_when_fooled)
    return attack_predictions(info.member, model, x, target, radius, budget, progress)


@dataclass
class AttackCost:
    """What each attack of a list cost, both scales together: ``seconds`` (wall time, for logs and
    benchmarks: it depends on the machine) and ``evaluations`` (images passed through the model,
    forward passes of gradient steps included: the same on every machine), by attack name."""

    seconds: dict[str, float] = field(default_factory=dict)
    evaluations: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, model: nn.Module, name: str) -> Iterator[None]:
        n = [0]
        hook = model.register_forward_pre_hook(lambda _m, args: n.__setitem__(0, n[0] + len(args[0])))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            hook.remove()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.evaluations[name] = self.evaluations.get(name, 0) + n[0]


def attack_list(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float, attacks: Sequence[str],
                budget: AttackBudget, progress: bool = False, cost: AttackCost | None = None,
                scales: Sequence[int] = (1, 2), known: Mapping[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """The robustness attacks ``attacks`` in order against F(x) = ``pred``, at eps then 2 eps (the
    ``scales`` asked for), each on the points still robust (AutoAttack's convention): the columns
    ``<prefix>_pred_<s>x`` and ``<prefix>_conf_<s>x`` of each (-1 / NaN where it did not run).
    APGD-CE, first in every list, is the exception: at 2 eps it attacks every point it left robust
    at eps, and repeats its eps prediction where it broke the point there, so its own verdict is
    complete at both radii (the attacks after it add to it, reports/strength.md).
    ``cost`` (if given) receives what each attack cost. ``known``: columns of an earlier run of the
    same attacks on the same points (e.g. the evaluate records' APGD-CE), taken as they are instead
    of attacking again."""
    cols: dict[str, torch.Tensor] = {}
    alive = torch.ones(len(pred), dtype=torch.bool)
    cost = cost if cost is not None else AttackCost()
    for s in scales:
        for name in attacks:
            prefix = ATTACKS[name].prefix
            if known is not None and f"{prefix}_pred_{s}x" in known:
                adv, conf = known[f"{prefix}_pred_{s}x"].clone(), known[f"{prefix}_conf_{s}x"].clone()
                alive &= (adv == pred) | (adv == -1)
                cols[f"{prefix}_pred_{s}x"], cols[f"{prefix}_conf_{s}x"] = adv, conf
                continue
            adv, conf = torch.full_like(pred, -1), torch.full((len(pred),), float("nan"))
            on = alive
            if s == 2 and name == "apgd-ce" and "adv_pred_1x" in cols:
                # APGD-CE, which every list starts with, attacks at 2 eps every point it left robust
                # at eps (so its own verdict is complete); where it broke the point it keeps that
                adv = cols["adv_pred_1x"].clone()
                on = adv == pred
            at = on.nonzero().squeeze(1)
            with cost.measure(model, name):
                if len(at):
                    adv[at], conf[at] = _run(model, name, x[at], pred[at], s * eps, budget, progress)
            alive &= (adv == pred) | (adv == -1)
            cols[f"{prefix}_pred_{s}x"], cols[f"{prefix}_conf_{s}x"] = adv, conf
    return cols


def selector_attack(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float, run_scales: Sequence[int],
                    budget: AttackBudget, progress: bool = False) -> dict[str, torch.Tensor]:
    """APGD-conf (17) on every point at the scales ``run_scales``: the ``sr_*`` columns."""
    cols: dict[str, torch.Tensor] = {}
    for s in (1, 2):
        if s in run_scales:
            cols[f"sr_pred_{s}x"], cols[f"sr_conf_{s}x"] = _run(model, "apgd-conf", x, pred, s * eps, budget,
                                                                progress)
        else:
            cols[f"sr_pred_{s}x"] = torch.full_like(pred, -1)
            cols[f"sr_conf_{s}x"] = torch.full((len(pred),), float("nan"))
    return cols


def empirical_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                      eps: float, norm: str | None = None, steps: int | None = None,
                      restarts: int | None = None, seed: int | None = None, batch_size: int | None = None,
                      sr_scales: Sequence[int] = (2,),
                      attacks: Sequence[str] = PAPER_DEFAULT, budget: AttackBudget | None = None,
                      progress: bool = True, cost: AttackCost | None = None,
                      known: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """Per-sample records (records.EMPIRICAL_COLUMNS, then the columns of the list's further
    attacks) at eps and 2 eps: the clean prediction and confidence, the robustness attacks of
    ``attacks`` in order against F(x) (:func:`attack_list`), and APGD-conf (17) at ``sr_scales``
    for softmax response (2 eps is what robust selection needs; -1 / NaN at scales not run).

    ``budget``: the attacks' budgets (:meth:`EvaluateConfig.budget`); or, without it, one made of
    ``norm``, ``steps``, ``restarts``, ``seed`` and ``batch_size`` (enough for APGD; unset ones take
    :class:`AttackBudget`'s defaults), never both. ``cost`` (if given) receives what each robustness
    attack cost. ``known``: columns of earlier records of these points (``pred``, ``conf`` and attack
    columns, see :func:`attack_list`), reused instead of computed again."""
    flat = {"norm": norm, "steps": steps, "restarts": restarts, "seed": seed, "batch_size": batch_size}
    given = {k: v for k, v in flat.items() if v is not None}
    if budget is not None and given:
        raise ParamError(f"empirical_records: give the attacks' budget or {sorted(given)}, not both")
    budget = budget or AttackBudget(**given)
    attacks = check_attack_list(attacks, "attacks")
    with eval_mode(model):
        pred, conf = (known["pred"], known["conf"]) if known is not None and "pred" in known else natural(model, x)
        cols = {"index": index, "label": y, "pred": pred, "conf": conf, "eps": torch.full_like(conf, eps)}
        robust_cols = attack_list(model, x, pred, eps, attacks, budget, progress, cost, known=known)
        cols |= robust_cols | selector_attack(model, x, pred, eps, sr_scales, budget, progress)
    df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
    extra = [c for c in robust_cols if c not in EMPIRICAL_COLUMNS]
    return df[EMPIRICAL_COLUMNS + extra]


class PointSet(NamedTuple):
    """Points to evaluate: inputs, labels, dataset indices, and (optional) ``known`` columns of
    earlier records of them (:func:`empirical_records`)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    known: Mapping[str, torch.Tensor] | None = None


#: the columns of a model's records that a stronger attack list reuses (APGD-CE is first in every list)
REUSED = ("pred", "conf", "adv_pred_1x", "adv_conf_1x", "adv_pred_2x", "adv_conf_2x")


class Evaluated(NamedTuple):
    """A set's records and what their attacks cost."""

    records: pd.DataFrame
    cost: AttackCost


def _sum_costs(costs: Sequence[AttackCost]) -> AttackCost:
    total = AttackCost()
    for c in costs:
        for a, v in c.seconds.items():
            total.seconds[a] = total.seconds.get(a, 0.0) + v
        for a, v in c.evaluations.items():
            total.evaluations[a] = total.evaluations.get(a, 0) + v
    return total


def records_in_pieces(model: nn.Module, sets: Mapping[str, PointSet], eps: float, attacks: Sequence[str],
                      budget: AttackBudget, sr_scales: Sequence[int] = (2,), desc: str | None = "evaluate"
                      ) -> dict[str, Evaluated]:
    """:func:`empirical_records` of each set of points, and what its attacks cost, computed in
    pieces of ``budget.batch_size`` points spread over worker processes (:func:`~..parallel.pmap`).

    Piece ``k`` of every set is attacked as a whole with the budget's seed for piece ``k``
    (:func:`~..parallel.piece_seed`): the records depend on ``batch_size``, never on the number of
    workers. Rows keep the sets' order. A set's ``known`` columns (e.g. :data:`REUSED` of earlier
    records, for a stronger list after the records' APGD-CE) are taken as they are."""
    pieces = set_pieces({name: len(ps.y) for name, ps in sets.items()}, budget.batch_size)

    def run(piece: tuple[str, int, range]) -> Evaluated:
        name, k, r = piece
        ps, at = sets[name], slice(r.start, r.stop)
        known = {c: v[at] for c, v in ps.known.items()} if ps.known is not None else None
        cost = AttackCost()
        df = empirical_records(model, ps.x[at], ps.y[at], ps.index[at], eps, sr_scales=sr_scales, attacks=attacks,
                               budget=replace(budget, seed=piece_seed(budget.seed, k)), progress=False, cost=cost,
                               known=known)
        return Evaluated(df, cost)

    done = by_set(pieces, pmap(run, pieces, desc=desc, device=model_device(model)))
    return {name: Evaluated(pd.concat([d.records for d in parts], ignore_index=True),
                            _sum_costs([d.cost for d in parts])) for name, parts in done.items()}
