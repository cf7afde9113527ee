"""Certification sharded over test points: shard S of k certifies the points j with j % k == S
(stage ``certify@MODEL-S``), and :func:`merge_shards` joins a model's shards into its certified
records (stage ``certify_merge``). Because CERTIFY's noise is seeded per (seed, test index), the
merged records equal those of one unsharded run byte for byte. Needs neither torch nor scipy, so
the merge stage starts fast."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import ParamError
from ..params import count
from ..analysis.records import CERTIFIED_COLUMNS, CERTIFIED_DTYPES, EXACT_READ


def shard_positions(n_points: int, shard: int, num_shards: int) -> list[int]:
    """Positions j in [0, n_points) with j % num_shards == shard. Strided rather than in blocks, so
    the shards of a test set sorted by anything (class, difficulty) take about the same time. The
    shards of 0..num_shards-1 partition range(n_points)."""
    num_shards = count(num_shards, "num_shards")
    shard = count(shard, "shard", min=0)
    if shard >= num_shards:
        raise ParamError(f"shard must be in [0, {num_shards}), got {shard}")
    return list(range(shard, count(n_points, "n_points", min=0), num_shards))


def shard_count(shards: Sequence[int] | None) -> int:
    """The number of shards from the params list ``shards`` (a DVC matrix axis), which must be
    exactly [0, 1, ..., k-1]; None means one shard."""
    if shards is None:
        return 1
    if (not isinstance(shards, (list, tuple)) or not shards
            or list(shards) != list(range(len(shards)))):
        raise ParamError(f"certify.shards must be the list [0, 1, ..., k-1], got {shards!r}")
    return len(shards)


def shard_meta(settings: dict, shard: int, num_shards: int, n_points: int) -> dict:
    """The sidecar JSON of one shard: which part of which run it is (``settings``: see
    :func:`robust_abstain.evaluation.certify.certify_settings`)."""
    return {**settings, "shard": int(shard), "num_shards": int(num_shards), "n_points": int(n_points)}


def merge_shards(paths: Sequence[str | os.PathLike], n_points: int | None = None) -> pd.DataFrame:
    """The certified records of all points 0..n_points-1 from shard CSVs (each with its sidecar
    ``<csv>.json`` from :func:`shard_meta`), sorted by index. ``n_points``: as the shards recorded
    it when None.

    Guarantee: the result is the file an unsharded run with the same settings writes, because
    noise is seeded per (seed, index). Refuses, naming the file, shards made with other settings
    or weights, of another shard count or test-set size, a missing shard, and any point missing or
    present twice."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ParamError("no shards to merge")
    frames, ids, ref = [], [], None
    for p in paths:
        meta_path = p.with_name(p.name + ".json")
        if not p.is_file() or not meta_path.is_file():
            raise ParamError(f"shard {p} (or its {meta_path.name}) is missing; run its certify stage")
        meta = json.loads(meta_path.read_text())
        base = {k: v for k, v in meta.items() if k != "shard"}
        if ref is None:
            ref, ref_path = base, p
            n_points = meta["n_points"] if n_points is None else n_points
        elif base != ref:
            diff = sorted(k for k in set(base) | set(ref) if base.get(k) != ref.get(k))
            raise ParamError(f"shard {p} differs from {ref_path} in {diff}; re-run the stale shard")
        if meta["n_points"] != n_points or meta["num_shards"] != len(paths):
            raise ParamError(f"shard {p} is shard {meta['shard']} of {meta['num_shards']} over "
                             f"{meta['n_points']} points; expected {len(paths)} shards over {n_points}")
        df = pd.read_csv(p, **EXACT_READ)
        if list(df.columns) != CERTIFIED_COLUMNS:
            raise ParamError(f"{p} is not a certified-records file (columns {list(df.columns)})")
        expected = shard_positions(n_points, meta["shard"], meta["num_shards"])
        if df["index"].tolist() != expected:
            raise ParamError(f"{p} does not hold exactly the points of shard {meta['shard']}")
        frames.append(df.astype(CERTIFIED_DTYPES))
        ids.append(meta["shard"])
    if sorted(ids) != list(range(len(paths))):
        raise ParamError(f"shards {sorted(ids)} given; expected each of 0..{len(paths) - 1} once")
    out = pd.concat(frames).sort_values("index", kind="stable").reset_index(drop=True)
    return out[CERTIFIED_COLUMNS]
