"""Choices made on **validation** records (points from the training split), never on test records.

Every knob the reports turn (a softmax-response threshold tau, the best composition, the cascade,
the tau whose R_rob^sel matches S_ERI's) is chosen here from validation records; the caller then
scores the chosen configuration on test records. The adaptive stage and the report call the same
functions with the same params, so they agree on what was chosen.

Criterion of "best" (:func:`compose.best_composition`): the highest sound R_rob^acc among
compositions losing at most ``max_nat_drop`` natural accuracy against the core (on validation);
ties by natural accuracy, then the earlier candidate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .compose import Candidate, best_composition
from .errors import ParamError
from .selectors import eri, has_softmax_response, softmax_response_sweep


def tau_grid(n_taus: int) -> np.ndarray:
    """``n_taus`` softmax-response thresholds evenly spaced in [0, 0.99], rounded to 4 decimals."""
    if not 2 <= n_taus <= 100:
        raise ParamError(f"the tau grid needs 2 to 100 thresholds (selectors are named SR@0.xx), "
                         f"got {n_taus}")
    return np.round(np.linspace(0.0, 0.99, n_taus), 4)


def sr_tau(val_robust: pd.DataFrame, val_core: pd.DataFrame, taus: Sequence[float],
           max_nat_drop: float) -> float | None:
    """The tau of the best softmax-response composition of this robust model with the core, chosen
    on validation; None when the records hold no APGD-conf evidence."""
    if not has_softmax_response(val_robust):
        return None
    cands = [Candidate(s.name, val_robust, s, {"tau": s.params["tau"]})
             for s in softmax_response_sweep(val_robust, np.asarray(taus, dtype=float))]
    return float(best_composition(cands, val_core, max_nat_drop)["candidate"].info["tau"])


def matched_tau(val_robust: pd.DataFrame, taus: Sequence[float]) -> float | None:
    """The tau >= 1/2 whose S_SR robust selection R_rob^sel is closest to S_ERI's, on validation
    (the abstain table's "matched" comparison); None without APGD-conf evidence or such a tau.
    Below 1/2, S_SR's robust selection is a subset of S_ERI's by construction (selectors.py)."""
    taus = np.asarray(taus, dtype=float)
    taus = taus[taus >= 0.5]
    if not has_softmax_response(val_robust) or not len(taus):
        return None
    target = eri(val_robust).robust_selection
    sels = softmax_response_sweep(val_robust, taus)
    gaps = [abs(s.robust_selection - target) for s in sels]
    return float(sels[int(np.argmin(gaps))].params["tau"])
