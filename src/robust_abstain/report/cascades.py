"""The cascades' section of compositions.md: the greedy cascade chosen on validation against the best
single 2-composition, both scored on test by the sound rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..analysis.choose import Candidate, best_cascade
from ..analysis.compose import Outcome, cascade
from ..analysis.selectors import SelectorSpec, selections, selector_grid
from ..analysis.stats import Interval, paired_diff_ci, rate_ci
from . import tables
from .models import ModelInfo, flat


@dataclass(frozen=True)
class CascadeRow:
    """A chain of compositions scored on test (sound rule): rates with exact 95 % intervals, changes
    against the core without."""

    label: str
    chain: str
    nat_acc: Interval
    rob_acc: Interval
    d_nat_acc: float
    d_rob_acc: float


@dataclass(frozen=True)
class CascadeSummary:
    """``best_cascade/...``: the cascade's length, R_nat, sound R_rob^acc and its gain over the best
    single 2-composition on test (paired 95 % interval)."""

    length: int
    nat_acc: float
    rob_acc: Interval
    gain: Interval


def cascades_md(models: Sequence[ModelInfo], core: ModelInfo, taus: np.ndarray, max_nat_drop: float,
                max_cascade: int, seed: int) -> tuple[str, dict[str, Any], tuple[str, Outcome]]:
    """Greedy cascade search on validation over every selector of every robust model
    (selectors.selector_grid); the chain and the best single composition it is compared with are
    then scored on test. Returns the section's text, the ``best_cascade/...`` entries and the
    chain (its name and its test outcome)."""
    specs: dict[str, tuple[ModelInfo, SelectorSpec]] = {}
    cands = []
    for m in models:
        if m.role == "core" or m.val_records is None:
            continue
        grid = selector_grid(m.val_records, taus)
        for s, sel in zip(grid, selections(grid, m.val_records)):
            name = f"{m.name}+{s.name}"
            specs[name] = (m, s)
            cands.append(Candidate(name, m.val_records, sel, model=m.name))
    res = best_cascade(cands, core.val_records, max_nat_drop, "sound", max_cascade)
    rows, outcomes, chain_outcome = [], [], None
    for label, chain in (("best 2-composition (chosen on val)", [res.best_single.name]),
                         ("greedy cascade (chosen on val)", res.chain)):
        ms = [specs[n] for n in chain]
        o = cascade([m.records for m, _ in ms], core.records, [s.selection(m.records) for m, s in ms])
        nat, rob = rate_ci(o.h_correct), rate_ci(o.sound)
        rows.append(CascadeRow(label, " → ".join(chain), nat, rob, nat.value - o.core_nat_acc,
                               rob.value - o.core_rob_acc))
        outcomes.append(o.sound)
        chain_outcome = (rows[-1].chain, o)
    diff = paired_diff_ci(outcomes[1], outcomes[0], seed=seed)
    verdict = (f"Cascade minus best single on test (sound R_rob^acc): {tables.dci(*diff.as_tuple())} "
               f"points (paired 95 % interval); on validation the cascade "
               f"{'beats' if res.beats_single else 'does not beat'} the best single.")
    text = ("\n## Cascades (greedy along the validation Pareto front, sound rule)\n\n"
            + tables.cascade_table(rows, verdict)
            + "\nCascades are scored by the sound rule from the records only (no adaptive attack), "
              "so a 2-composition may read a little higher here than in the tables above.\n")
    summary = CascadeSummary(len(res.chain), rows[1].nat_acc.value, rows[1].rob_acc, diff)
    return text, flat(summary, ("length", "nat_acc", "rob_acc", "gain"), "best_cascade"), chain_outcome
