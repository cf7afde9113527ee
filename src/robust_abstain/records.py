"""The per-sample records schema: the contract between ``evaluate``/``certify`` and everything
downstream (selectors, splits, compositions, cascades, tables, figures).

One CSV per (model, threat model), one row per test point. A model is attacked or certified once;
nothing downstream re-attacks (except the adaptive attack on compositions, which is an attack on H,
not on a single model).

Empirical records (``evaluate`` stage, Linf or L2 APGD):
    index         test-set index of the point
    label         true class y
    pred          natural prediction F(x)
    conf          natural softmax confidence max_c f(x)_c
    eps           the threat-model radius eps of this file (constant column)
    adv_pred_1x   APGD-CE prediction at the worst point found in B_eps(x), attacking F(x)
                  (so robustness is measured for inaccurate points too)
    adv_pred_2x   the same in B_2eps(x)
    sr_pred_2x    APGD-conf (17) in B_2eps(x): prediction at the point maximising max_{c!=F(x)} f_c
    sr_conf_2x    f(x')_{F(x)} at that point (the softmax-response confidence an attacker reached)
    sr_pred_1x, sr_conf_1x   the same in B_eps(x)

Certified records (``certify`` stage, randomized smoothing, L2):
    index, label, pred (base model's natural prediction), conf
    cert_pred     CERTIFY's class for the smoothed classifier G, -1 where it abstains
    cert_radius   its certified L2 radius (0 where it abstains)
    smooth_pred   PREDICT's class for G (-1 = abstain), used for G's natural accuracy
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ABSTAIN = -1

EMPIRICAL_COLUMNS = ["index", "label", "pred", "conf", "eps", "adv_pred_1x", "adv_pred_2x",
                     "sr_pred_1x", "sr_conf_1x", "sr_pred_2x", "sr_conf_2x"]
CERTIFIED_COLUMNS = ["index", "label", "pred", "conf", "smooth_pred", "cert_pred", "cert_radius"]
CERTIFIED_DTYPES = {"index": "int64", "label": "int64", "pred": "int64", "conf": "float64",
                    "smooth_pred": "int64", "cert_pred": "int64", "cert_radius": "float64"}
#: ``pd.read_csv`` options that read back floats exactly as written
EXACT_READ = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def check(df: pd.DataFrame, columns: list[str], name: str = "records") -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")
    return df


def accurate(df: pd.DataFrame) -> np.ndarray:
    """F(x) == y."""
    return (df["pred"] == df["label"]).to_numpy()


def robust(df: pd.DataFrame, scale: int = 1) -> np.ndarray:
    """F robust on B_{scale * eps}(x): no attack point changed the prediction F(x).

    Per-sample worst case: B_eps is inside B_2eps, so a point non-robust at eps is non-robust at
    2 eps even if the 2 eps attack missed it."""
    r1 = (df["adv_pred_1x"] == df["pred"]).to_numpy()
    if scale == 1:
        return r1
    if scale == 2:
        return r1 & (df["adv_pred_2x"] == df["pred"]).to_numpy()
    raise ValueError(f"scale must be 1 or 2, got {scale}")


def certified_robust(df: pd.DataFrame, radius: float) -> np.ndarray:
    """G certified (non-abstaining) with an L2 radius of at least ``radius`` (radius 0: G answers)."""
    return ((df["cert_pred"] != ABSTAIN) & (df["cert_radius"] >= radius)).to_numpy()
