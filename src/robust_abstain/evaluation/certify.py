"""The resumable runner of randomized-smoothing certification (:mod:`.smoothing`) over a test set:
the certify section's typed config, the settings a certified record depends on, and
:func:`certify_dataset`, which appends each group of points to a partial file as it comes, so a
killed run resumes where it stopped and ends with the file an uninterrupted run writes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..analysis.records import CERTIFIED_COLUMNS, CERTIFIED_DTYPES, EXACT_READ
from ..attacks import eval_mode
from ..errors import ParamError
from ..io import save_csv, save_json
from ..models.checkpoint import weights_digest
from ..parallel import pimap
from ..params import Section, count, positive
from .shards import shard_count
from .smoothing import NOISE_BLOCK, Smooth, check_budget


@dataclass(frozen=True)
class CertifyConfig(Section):
    """The ``certify`` params section: CERTIFY's budget (n0, n, alpha) for G with noise ``sigma``,
    on the first ``n_points`` test points, split over the stages of ``shards`` ([0, ..., k-1])."""

    sigma: float
    n0: int
    n: int
    alpha: float
    n_points: int
    batch_size: int
    seed: int
    shards: list[int]
    device: str = "auto"

    def validate(self, prefix: str = "certify") -> None:
        positive(self.sigma, f"{prefix}.sigma")
        check_budget(self.n0, self.n, self.alpha, self.batch_size, prefix=f"{prefix}.")
        count(self.n_points, f"{prefix}.n_points")
        count(self.seed, f"{prefix}.seed", min=0)
        shard_count(self.shards)


def _read_partial(partial: Path, meta: Path, key: dict, labels: dict[int, int]) -> pd.DataFrame | None:
    """The valid rows of a previous run with the same settings, or None (start afresh)."""
    if not partial.exists() or not meta.exists():
        return None
    try:
        if json.loads(meta.read_text()) != key:
            warnings.warn(f"{partial} was made with other settings; starting afresh")
            return None
        text = partial.read_text()
        if not text.endswith("\n"):  # a line torn by a crash mid-write: drop it
            text = text[:text.rfind("\n") + 1]
        df = pd.read_csv(io.StringIO(text), on_bad_lines="skip", **EXACT_READ)
    except (ValueError, OSError) as e:
        warnings.warn(f"cannot read {partial} ({e}); starting afresh")
        return None
    if list(df.columns) != CERTIFIED_COLUMNS:
        return None
    df = df.apply(pd.to_numeric, errors="coerce").dropna()  # a torn last line from a crash
    df = df.astype(CERTIFIED_DTYPES).drop_duplicates("index")
    if any(labels.get(i, lab) != lab for i, lab in zip(df["index"], df["label"])):
        warnings.warn(f"{partial} has other labels for the same indices; starting afresh")
        return None
    return df


def certify_settings(smooth: Smooth, n0: int, n: int, alpha: float, seed: int) -> dict:
    """Everything a certified record depends on besides the point itself: CERTIFY's (n0, n, alpha),
    sigma, the noise seed and stream layout, and a hash of the base model's weights. Two runs (or two
    shards) with equal settings certify a point identically."""
    return {"n0": int(n0), "n": int(n), "alpha": float(alpha), "sigma": smooth.sigma, "seed": int(seed),
            "num_classes": smooth.num_classes, "noise_block": NOISE_BLOCK,
            "model": weights_digest(smooth.base_classifier)}


def _clean_predictions(model: nn.Module, x: torch.Tensor, batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(max softmax confidence, prediction) of the base model on the clean points ``x``."""
    with eval_mode(model), torch.inference_mode():
        return torch.cat([F.softmax(model(x[i:i + batch_size]), 1)
                          for i in range(0, len(x), batch_size)]).max(1)


def certify_dataset(smooth: Smooth, x: torch.Tensor, y: torch.Tensor,
                    indices: Sequence[int] | torch.Tensor, out_path: str | os.PathLike, n0: int, n: int,
                    alpha: float, batch_size: int, seed: int, points_per_call: int = 20,
                    progress: bool = True) -> pd.DataFrame:
    """Certified records (records.CERTIFIED_COLUMNS, sorted by index) for the points x[j] with
    labels y[j] and dataset indices ``indices[j]``, written atomically to ``out_path``.

    pred/conf: the base model on clean x. cert_pred/cert_radius: CERTIFY (n0, n, alpha).
    smooth_pred: PREDICT (alpha) run on CERTIFY's n estimation counts rather than n fresh draws,
    which halves the cost; each keeps its own guarantee (PREDICT's needs only n i.i.d. draws).

    Resumable: after each group of ``points_per_call`` points, its rows are appended to
    ``out_path + ".partial.csv"`` (flushed and fsynced); the settings (n0, n, alpha, sigma, seed,
    model weights) are kept in ``out_path + ".partial.json"``. A later call with the same settings
    skips the points found there; other settings start afresh. Noise is seeded per point by
    (seed, index), so a resumed run writes the same file as an uninterrupted one. Nothing appears at
    ``out_path`` unless every point is done; then both partial files are removed."""
    check_budget(n0, n, alpha, batch_size)
    n0, n, alpha, batch_size = int(n0), int(n), float(alpha), int(batch_size)
    seed, points_per_call = count(seed, "seed", min=0), count(points_per_call, "points_per_call")
    idx = torch.as_tensor(indices, dtype=torch.long).cpu()
    y = torch.as_tensor(y, dtype=torch.long).cpu()
    if not (len(idx) == len(x) == len(y)):
        raise ParamError(f"x, y and indices differ in length: {len(x)}, {len(y)}, {len(idx)}")
    if len(torch.unique(idx)) != len(idx):
        raise ParamError("indices must be unique")
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial.csv")
    meta = out_path.with_name(out_path.name + ".partial.json")
    from ..digests import source_fingerprint   # the partial file resumes only under the same code
    key = {**certify_settings(smooth, n0, n, alpha, seed), "code": source_fingerprint()}
    labels = dict(zip(idx.tolist(), y.tolist()))
    done = _read_partial(partial, meta, key, labels)
    if done is None:
        done = pd.DataFrame({c: pd.Series(dtype=t) for c, t in CERTIFIED_DTYPES.items()})
        save_json(key, meta)
    save_csv(done, partial)  # a clean file (no torn line) to append to
    done_set = set(done["index"].tolist())
    todo = [j for j, i in enumerate(idx.tolist()) if i not in done_set]

    def certify_group(g: int) -> pd.DataFrame:
        pos = torch.tensor(todo[g:g + points_per_call])
        xs = x[pos]
        conf, pred = _clean_predictions(smooth.base_classifier, xs, batch_size)
        cls, radius, spred = smooth.certify_points(xs, idx[pos], seed, n0, n, alpha, batch_size)
        return pd.DataFrame({"index": idx[pos].numpy(), "label": y[pos].numpy(),
                             "pred": pred.cpu().numpy(), "conf": conf.double().cpu().numpy(),
                             "smooth_pred": spred.cpu().numpy(), "cert_pred": cls.cpu().numpy(),
                             "cert_radius": radius.cpu().numpy()})[CERTIFIED_COLUMNS]

    # groups of points in worker processes (noise is per point, so any split certifies alike),
    # appended here in order as they finish
    groups = pimap(certify_group, range(0, len(todo), points_per_call), device=x.device)
    with open(partial, "a") as f, tqdm(total=len(idx), initial=len(idx) - len(todo), desc="certify",
                                       unit="pt", disable=not progress) as bar, contextlib.closing(groups):
        for rows in groups:
            rows.to_csv(f, header=False, index=False)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(rows))
    df = pd.read_csv(partial, **EXACT_READ).astype(CERTIFIED_DTYPES)
    df = df[df["index"].isin(labels)].drop_duplicates("index").sort_values("index", kind="stable")
    df = df.reset_index(drop=True)[CERTIFIED_COLUMNS]
    if len(df) != len(idx):
        raise RuntimeError(f"{partial} holds {len(df)} of {len(idx)} points after the run")
    save_csv(df, out_path)
    partial.unlink()
    meta.unlink()
    return df
