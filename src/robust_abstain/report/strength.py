"""strength.md: would a stronger attack change the numbers? Per model, at eps and 2 eps, how many
points each further attack of the list (APGD-T, FAB-T, Square, in the list's order) breaks that
APGD-CE and the attacks before it left robust, what robust accuracy under APGD-CE alone and under
the whole list are (with the paired difference), and what each attack cost.

Input: records of the ``evaluate_strong`` section (the list on a subset of test points after the
evaluate records' own APGD-CE verdicts, each attack only on the survivors: records.py) and the cost
of each attack (model evaluations per point it attacked: APGD-CE's over all the test points, the
others' over the subset). Nothing here attacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..analysis.records import accurate, attack_broke, attack_prefixes
from ..analysis.stats import Interval, paired_diff_ci, rate_ci
from ..attacks.registry import ATTACKS
from ..errors import DataError
from .tables import ci, dci, markdown, num

_NAME = {a.prefix: name for name, a in ATTACKS.items()}


@dataclass(frozen=True)
class StrengthRow:
    """One model at one scale: ``broken`` by attack name (points APGD-CE left robust up to this scale
    that the attack broke, at this scale or a smaller one, and no earlier attack did; they add up to
    the points the list breaks beyond APGD-CE), robust accuracy under APGD-CE alone and under the
    list, and their paired difference (list minus APGD-CE, <= 0)."""

    model: str
    scale: int
    n: int
    broken: dict[str, int]
    rob_acc_apgd: Interval
    rob_acc_list: Interval
    d_rob_acc: Interval


def strength_rows(name: str, df: pd.DataFrame, seed: int) -> list[StrengthRow]:
    """The rows of one model's ``evaluate_strong`` records, at eps and 2 eps."""
    acc, pred = accurate(df), df["pred"].to_numpy()
    rows = []
    for s in (1, 2):
        apgd_ok = np.ones(len(df), dtype=bool)
        for t in range(1, s + 1):
            apgd_ok &= df[f"adv_pred_{t}x"].to_numpy() == pred
        broken: dict[str, int] = {}
        extra = np.zeros(len(df), dtype=bool)       # broken by a further attack, APGD-CE robust
        for t in range(1, s + 1):
            for p in attack_prefixes(df, t):
                if p in ("adv", "sr"):
                    continue
                # at 2 eps APGD-CE re-attacks what a member broke at eps: not beyond APGD-CE if it breaks it
                hit = attack_broke(df, p, t) & apgd_ok & ~extra
                broken[_NAME.get(p, p)] = broken.get(_NAME.get(p, p), 0) + int(hit.sum())
                extra |= hit
        ok_list = apgd_ok & ~extra
        rows.append(StrengthRow(name, s, len(df), broken, rate_ci(acc & apgd_ok), rate_ci(acc & ok_list),
                                paired_diff_ci(acc & ok_list, acc & apgd_ok, seed=seed)))
    return rows


def _per_point(name: str, cost: Mapping[str, Any]) -> dict[str, float]:
    """Model evaluations per attacked test point of each attack, from the evaluate stage's --cost-out
    JSON: ``{"points": {attack: n}, "evaluations": {attack: count}}`` (APGD-CE's from every test point
    of the records, the further attacks' from the subset)."""
    points, evals = cost.get("points"), cost.get("evaluations")
    if not isinstance(evals, dict) or not isinstance(points, dict) or set(points) != set(evals) \
            or not all(isinstance(v, int) and v >= 1 for v in points.values()):
        raise DataError(f"strength cost of {name}: expected {{'points': {{attack: n >= 1}}, 'evaluations': "
                        f"{{attack: count}}}}, got {dict(cost)!r}; re-run its evaluate stage (dvc repro)")
    return {a: v / points[a] for a, v in evals.items()}


def strength_md(records: Mapping[str, pd.DataFrame], costs: Mapping[str, Mapping[str, Any]], eps: float,
                seed: int) -> tuple[str, dict[str, Any]]:
    """strength.md and its metric entries ``strength/<model>/{broken_<attack>_<s>x,d_rob_acc_<s>x[_lo,_hi]}``."""
    rows = [r for name, df in records.items() for r in strength_rows(name, df, seed)]
    attacks = [a for a in ATTACKS if any(a in r.broken for r in rows)]
    n = rows[0].n if rows else 0
    head = ["model", "radius", "R_rob^acc (APGD-CE)"] + [f"+ {a} breaks" for a in attacks] + [
        "R_rob^acc (list)", "Δ (list − APGD-CE)"]
    body, entries = [], {}
    for r in rows:
        body.append([r.model, f"{'ε' if r.scale == 1 else '2ε'} = {r.scale * eps:g}", ci(*r.rob_acc_apgd.as_tuple())]
                    + [str(r.broken.get(a, 0)) for a in attacks]
                    + [ci(*r.rob_acc_list.as_tuple()), dci(*r.d_rob_acc.as_tuple())])
        key = f"strength/{r.model}"
        entries.update({f"{key}/broken_{a}_{r.scale}x": r.broken.get(a, 0) for a in attacks})
        entries.update({f"{key}/d_rob_acc_{r.scale}x": r.d_rob_acc.value,
                        f"{key}/d_rob_acc_{r.scale}x_lo": r.d_rob_acc.lo,
                        f"{key}/d_rob_acc_{r.scale}x_hi": r.d_rob_acc.hi})
    total = {(a, k): sum(r.broken.get(a, 0) for r in rows if r.scale == k) for a in attacks for k in (1, 2)}
    per_point = {name: _per_point(name, c) for name, c in costs.items()}
    cost_head = ["model"] + [a for a in ATTACKS if any(a in c for c in per_point.values())]
    cost_body = [[name] + [num(round(c[a], 1)) if a in c else "–" for a in cost_head[1:]]
                 for name, c in per_point.items()]
    text = (
        "# Would a stronger attack change the numbers?\n\n"
        f"The robustness attacks of the list, in order, on the first {n} test points of every model "
        "(a subset, for the time budget: `evaluate_strong.n_points`): each attack runs only on the points "
        "every earlier attack left robust (AutoAttack's convention), at ε and then at 2ε (there APGD-CE "
        "on every point it left robust at ε, the others only on the points robust at ε under the whole "
        "list). '+ attack breaks' counts the points APGD-CE left robust at that radius that the attack "
        "broke, at that radius or at ε, and no earlier attack did, misclassified points included (an "
        "attack that moves a wrong answer shrinks the robust inaccuracy, not R_rob^acc). Numbers in "
        "percent, [95 % interval]; Δ: paired bootstrap 95 % interval over the same points.\n\n"
        + markdown(head, body, align="ll" + "r" * (len(head) - 2)) + "\n\n"
        + "Points broken beyond APGD-CE, all models together (at ε; at 2ε, those at ε included): "
        + ", ".join(f"{a}: {total[a, 1]}; {total[a, 2]}" for a in attacks) + ".\n\n"
        "## What each attack cost\n\n"
        "Model evaluations (images through the model, the forward passes of gradient steps included) "
        "per attacked test point, both radii together: the same on every machine "
        "(`bench/bench_attacks.py` gives seconds). APGD-CE's verdicts on the subset are the records' "
        "own (not attacked again), so its cost is over all the test points of the records.\n\n"
        + markdown(cost_head, cost_body) + "\n")
    return text, entries
