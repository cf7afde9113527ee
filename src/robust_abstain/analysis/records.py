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
    adv_conf_1x   f(x')_{F(x)} at that point (the confidence APGD-CE left to F(x))
    adv_pred_2x, adv_conf_2x   the same in B_2eps(x) (attacked only where APGD-CE left the point
                  robust at eps: elsewhere adv_pred_2x = adv_pred_1x and adv_conf_2x is NaN)
    sr_pred_2x    APGD-conf (17) in B_2eps(x): prediction at the point maximising max_{c!=F(x)} f_c
    sr_conf_2x    f(x')_{F(x)} at that point (the softmax-response confidence an attacker reached)
    sr_pred_1x, sr_conf_1x   the same in B_eps(x)
    <prefix>_pred_<s>x, <prefix>_conf_<s>x   (optional) the same for every further attack of the
                  evaluate list (``apgdt``: APGD-T, ``fabt``: FAB-T, ``square``: Square), run only on
                  the points every earlier attack of the list left unchanged at that scale, and at
                  2 eps only on the points the whole list left unchanged at eps (-1 / NaN where it
                  did not run); attacks.ATTACKS names them

Certified records (``certify`` stage, randomized smoothing, L2):
    index, label, pred (base model's natural prediction), conf
    cert_pred     CERTIFY's class for the smoothed classifier G, -1 where it abstains
    cert_radius   its certified L2 radius (0 where it abstains)
    smooth_pred   PREDICT's class for G (-1 = abstain), used for G's natural accuracy

Adaptive records (``adaptive`` stage, the end-to-end attack on a composition H; one row per attacked
point and selector):
    index         test-set index of the point
    selector      the selector's name (``ERI``, ``SR@0.90``)
    h_adv_wrong   the attack found x' in B_eps(x) with H(x') != y
    h_adv_pred    H(x') at that point (-1 where not fooled; kept, not used downstream)
Rows are required for every point the paper's rule counts as robust-accurate (the sound score counts
a subset of them, and only counted points can lose); other points may be missing.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..errors import DataError

ABSTAIN = -1

EMPIRICAL_COLUMNS = ["index", "label", "pred", "conf", "eps", "adv_pred_1x", "adv_conf_1x",
                     "adv_pred_2x", "adv_conf_2x", "sr_pred_1x", "sr_conf_1x", "sr_pred_2x", "sr_conf_2x"]
_ATTACK_COLUMN = re.compile(r"^(\w+)_pred_([12])x$")
ADAPTIVE_COLUMNS = ["index", "h_adv_wrong"]
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


def attack_prefixes(df: pd.DataFrame, scale: int = 1) -> list[str]:
    """The record column prefixes of every attack run at ``scale`` (``adv``, ``sr``, and those of the
    further attacks of the evaluate list), in column order: each has ``<prefix>_pred_<scale>x`` and
    ``<prefix>_conf_<scale>x``."""
    out = []
    for c in df.columns:
        m = _ATTACK_COLUMN.match(str(c))
        if m and int(m.group(2)) == scale:
            out.append(m.group(1))
    return out


def attack_broke(df: pd.DataFrame, prefix: str, scale: int) -> np.ndarray:
    """Where the attack with column ``prefix`` changed F(x) at ``scale`` (False where it did not run)."""
    adv = df[f"{prefix}_pred_{scale}x"].to_numpy()
    return (adv != df["pred"].to_numpy()) & (adv != ABSTAIN)


def robust(df: pd.DataFrame, scale: int = 1) -> np.ndarray:
    """F robust on B_{scale * eps}(x): **no** attack run at that scale (APGD-CE, every further
    attack of the evaluate list, and APGD-conf where it was run) changed the prediction F(x).

    Per-sample worst case over every attack: B_eps is inside B_2eps, so a point non-robust at eps
    is non-robust at 2 eps even if the 2 eps attacks missed it. APGD-CE (``adv``) must have run at
    every point; another attack's -1 means "not run" (the list skips points already broken)."""
    if scale not in (1, 2):
        raise ValueError(f"scale must be 1 or 2, got {scale}")
    pred = df["pred"].to_numpy()
    ok = np.ones(len(df), dtype=bool)
    for s in range(1, scale + 1):
        if f"adv_pred_{s}x" not in df.columns:
            raise DataError(f"records lack adv_pred_{s}x: APGD-CE's verdict is the evidence every other "
                            f"attack adds to")
        for p in attack_prefixes(df, s):
            adv = df[f"{p}_pred_{s}x"].to_numpy()
            ok &= (adv == pred) | ((adv == ABSTAIN) & (p != "adv"))
    return ok


def worst_confidence(df: pd.DataFrame, scale: int = 2) -> np.ndarray:
    """The lowest confidence f(x')_{F(x)} any attack run reached in B_{scale * eps}(x) (NaN runs
    ignored; the clean ``conf`` included, x being in its own ball). Softmax-response robust selection
    at tau needs this to stay >= tau."""
    cols = ["conf"] + [f"{p}_conf_{s}x" for s in range(1, scale + 1) for p in attack_prefixes(df, s)]
    return np.nanmin(df[cols].to_numpy(float), axis=1)


def certified_robust(df: pd.DataFrame, radius: float) -> np.ndarray:
    """G certified (non-abstaining) with an L2 radius of at least ``radius`` (radius 0: G answers)."""
    return ((df["cert_pred"] != ABSTAIN) & (df["cert_radius"] >= radius)).to_numpy()


def by_index(df: pd.DataFrame, name: str = "records") -> pd.DataFrame:
    """Records sorted by ``index`` (``df`` itself when already sorted: do not mutate the result);
    raises :class:`DataError` on duplicated indices."""
    if "index" not in df.columns:
        raise DataError(f"{name} lacks the 'index' column")
    idx = df["index"]
    if idx.is_monotonic_increasing and idx.is_unique:
        return df
    if idx.duplicated().any():
        dup = df.loc[df["index"].duplicated(), "index"].iloc[0]
        raise DataError(f"{name} has test point index {dup} more than once")
    return df.sort_values("index", kind="stable").reset_index(drop=True)


def align(*dfs: pd.DataFrame, names: list[str] | None = None) -> list[pd.DataFrame]:
    """Sort every record set by ``index`` and check they cover the same test points."""
    names = names or [f"records #{i}" for i in range(len(dfs))]
    out = [by_index(d, n) for d, n in zip(dfs, names)]
    ref = out[0]["index"].to_numpy()
    for d, n in zip(out[1:], names[1:]):
        idx = d["index"].to_numpy()
        if len(idx) != len(ref) or not np.array_equal(idx, ref):
            only = sorted(set(ref.tolist()) ^ set(idx.tolist()))[:5]
            raise DataError(f"{names[0]} and {n} cover different test points "
                            f"({len(ref)} vs {len(idx)} rows; e.g. index {only})")
    return out


def adaptive_fooled(df: pd.DataFrame, index: np.ndarray, need: np.ndarray) -> np.ndarray:
    """``h_adv_wrong`` of adaptive records at the points ``index`` (False where a point has no row);
    raises :class:`DataError` for points outside ``index`` and for missing rows where ``need``."""
    check(df, ADAPTIVE_COLUMNS, "adaptive records")
    wrong = by_index(df, "adaptive records").set_index("index")["h_adv_wrong"]
    extra = set(wrong.index.tolist()) - set(index.tolist())
    if extra:
        raise DataError(f"adaptive records hold test points the records lack, e.g. {sorted(extra)[:5]}")
    wrong = wrong.reindex(index)
    missing = need & wrong.isna().to_numpy()
    if missing.any():
        raise DataError(f"adaptive records lack {int(missing.sum())} points the rule counts as "
                        f"robust-accurate, e.g. index {index[missing][:5].tolist()}")
    return np.array([_as_bool(v) for v in wrong.to_numpy()], dtype=bool)


def _as_bool(v: object) -> bool:
    """A ``h_adv_wrong`` cell: bool, 0/1, or 'True'/'False' text from a CSV; missing -> False."""
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
