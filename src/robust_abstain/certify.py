"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019): PREDICT and CERTIFY for the smoothed
classifier G(x) = argmax_c P(f(x + eta) = c), eta ~ N(0, sigma^2 I), batched over many inputs.

Guarantees:
- PREDICT returns a class other than G(x) with probability at most ``alpha`` (it abstains otherwise).
- CERTIFY returns (c, r) with r > 0 and c != G(x), or G not constant on the L2 ball B_r(x), with
  probability at most ``alpha``; it abstains (-1, radius 0) when the lower confidence bound of
  p_A is below 1/2.
- Throughput: the noisy samples of all inputs of a call form one stream of (input, draw) pairs cut
  into full batches of ``batch_size``, so the base model sees full batches (only the last batch of a
  call may be shorter); counts are one ``torch.bincount`` per batch.
- Reproducibility: each input's noise comes in fixed-size blocks (``NOISE_BLOCK`` draws) from the
  generator given for it, so counts do not depend on ``batch_size``; with per-point generators
  (:func:`point_generators`, seeded by (seed, dataset index)) they do not depend on how points are
  grouped into calls either. This holds bit-for-bit when the base model's forward is batch-invariant
  (each output row independent of the rest of the batch), as are the linear and conv layers on CPU
  in practice.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm
from torch import nn
from tqdm.auto import tqdm

from .errors import ParamError
from .io import save_csv, save_json
from .params import count, number, positive
from .records import ABSTAIN, CERTIFIED_COLUMNS, CERTIFIED_DTYPES, EXACT_READ

NOISE_BLOCK = 250  # draws per randn call per input: part of the definition of the noise stream
Generators = torch.Generator | Sequence[torch.Generator] | None


def _check(n0: int | None, n: int, alpha: float, batch_size: int) -> None:
    if n0 is not None:
        count(n0, "n0")
    count(n, "n")
    number(alpha, "alpha", min=0, max=1, strict_min=True)
    if alpha >= 1:
        raise ParamError(f"alpha must be < 1, got {alpha!r}")
    count(batch_size, "batch_size")


def point_generators(seed: int, indices: Sequence[int] | torch.Tensor,
                     device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per point, seeded by a hash of (seed, dataset index): a point's noise depends
    on nothing but the seed and its own index (not on which other points share the call)."""
    seed = count(seed, "seed", min=0)
    out = []
    for i in torch.as_tensor(indices).tolist():
        s = int(np.random.SeedSequence([seed, int(i)]).generate_state(1, np.uint64)[0])
        out.append(torch.Generator(device=device).manual_seed(s))
    return out


def lower_confidence_bound(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials
    (the lower end of the two-sided ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``)."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = beta_dist.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, lo, 0.0)


class Smooth:
    """The smoothed classifier G of a base classifier f: [B, ...] -> [B, num_classes] logits."""

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float):
        self.base_classifier = base_classifier
        self.num_classes = count(num_classes, "num_classes", min=2)
        self.sigma = positive(sigma, "sigma")

    # -- sampling ----------------------------------------------------------------------------
    def _blocks(self, x: torch.Tensor, gens: list, n0: int, n: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(slot, noisy block) in stream order; slot = 2 * input + phase (0: selection, 1: estimation)."""
        for i in range(len(x)):
            for phase, total in ((0, n0), (1, n)):
                for start in range(0, total, NOISE_BLOCK):
                    k = min(NOISE_BLOCK, total - start)
                    eta = torch.randn((k, *x.shape[1:]), generator=gens[i], device=x.device, dtype=x.dtype)
                    yield 2 * i + phase, eta.mul_(self.sigma).add_(x[i])

    def noise_counts(self, x: torch.Tensor, n0: int, n: int, batch_size: int = 1000,
                     generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class counts of f on n0 (selection) then n (estimation) noisy copies of each input.

        Returns two LongTensors [B, num_classes]. ``generator``: one shared by all inputs (used in
        input order), one per input, or None (the global RNG). Every batch the model sees holds
        ``batch_size`` samples, drawn across inputs, except possibly the last."""
        count(n0, "n0", min=0)
        count(n, "n", min=0)
        count(batch_size, "batch_size")
        b, c = len(x), self.num_classes
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * b
        if len(gens) != b:
            raise ParamError(f"got {len(gens)} generators for {b} inputs")
        counts = torch.zeros(2 * b * c, dtype=torch.long, device=x.device)
        total = b * (n0 + n)
        if total == 0:
            return counts.view(b, 2, c)[:, 0], counts.view(b, 2, c)[:, 1]
        buf = torch.empty((min(batch_size, total), *x.shape[1:]), dtype=x.dtype, device=x.device)
        slots = torch.empty(len(buf), dtype=torch.long, device=x.device)
        model, was_training = self.base_classifier, self.base_classifier.training
        model.eval()

        def flush(m: int) -> None:
            logits = model(buf[:m])
            if logits.shape != (m, c):
                raise ParamError(f"base classifier returned shape {tuple(logits.shape)}, "
                                 f"expected ({m}, {c}) for num_classes={c}")
            counts.add_(torch.bincount(slots[:m] * c + logits.argmax(1), minlength=2 * b * c))

        try:
            with torch.inference_mode():
                fill = 0
                for slot, block in self._blocks(x, gens, n0, n):
                    while len(block):
                        take = min(len(buf) - fill, len(block))
                        buf[fill:fill + take].copy_(block[:take])
                        slots[fill:fill + take] = slot
                        fill, block = fill + take, block[take:]
                        if fill == len(buf):
                            flush(fill)
                            fill = 0
                if fill:
                    flush(fill)
        finally:
            model.train(was_training)
        counts = counts.view(b, 2, c)
        return counts[:, 0].clone(), counts[:, 1].clone()

    # -- decisions from counts -----------------------------------------------------------------
    @staticmethod
    def predict_from_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
        """PREDICT from counts [B, C]: the top class if a two-sided binomial test of the top-2 counts
        rejects p = 1/2 at level alpha, else ABSTAIN (a tie always abstains, its p-value being 1).
        The answer differs from G(x) with probability at most alpha."""
        top = torch.topk(counts.cpu(), 2, dim=1)
        out = torch.full((len(counts),), ABSTAIN, dtype=torch.long)
        for i, ((na, nb), ca) in enumerate(zip(top.values.tolist(), counts.cpu().argmax(1).tolist())):
            if na > nb and binomtest(na, na + nb, 0.5).pvalue <= alpha:
                out[i] = ca
        return out.to(counts.device)

    def certify_from_counts(self, counts0: torch.Tensor, counts: torch.Tensor,
                            alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY from selection counts [B, C] and independent estimation counts [B, C]:
        c_A = argmax of the selection counts (first on ties); p_A_lower = one-sided (1 - alpha)
        Clopper-Pearson bound on the estimation count of c_A; radius = sigma * PhiInv(p_A_lower).
        Abstains (-1, 0.0) where p_A_lower < 1/2. Sound with probability >= 1 - alpha."""
        ca = counts0.cpu().argmax(1)
        n = int(counts[0].sum()) if len(counts) else 0
        k = counts.cpu().gather(1, ca[:, None]).squeeze(1).numpy()
        p_lower = lower_confidence_bound(k, n, alpha)
        ok = p_lower >= 0.5
        radius = np.where(ok, self.sigma * norm.ppf(np.where(ok, p_lower, 0.5)), 0.0)
        cls = torch.where(torch.from_numpy(ok), ca, torch.full_like(ca, ABSTAIN))
        return cls.to(counts.device), torch.from_numpy(radius).to(counts.device)

    # -- Cohen et al.'s two procedures, for a batch of inputs ---------------------------------------
    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000,
                generator: Generators = None) -> torch.Tensor:
        """PREDICT for each input of x [B, ...] from n noisy samples: LongTensor [B], -1 = abstain.
        Each answer is G(x) or ABSTAIN with probability >= 1 - alpha."""
        _check(None, n, alpha, batch_size)
        _, counts = self.noise_counts(x, 0, n, batch_size, generator)
        return self.predict_from_counts(counts, alpha)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 1000,
                generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY each input of x [B, ...]: (class LongTensor [B], L2 radius float64 tensor [B]).
        With probability >= 1 - alpha per input, a non-abstaining answer c has G(x') = c for all
        ||x' - x||_2 < radius."""
        _check(n0, n, alpha, batch_size)
        counts0, counts = self.noise_counts(x, n0, n, batch_size, generator)
        return self.certify_from_counts(counts0, counts, alpha)

    def certify_points(self, x: torch.Tensor, indices: Sequence[int] | torch.Tensor, seed: int,
                       n0: int, n: int, alpha: float, batch_size: int = 1000
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CERTIFY with per-point noise seeded by (seed, dataset index), plus PREDICT on the same
        estimation counts: (cert_pred, cert_radius, smooth_pred). Each answer depends only on
        (seed, index, x[i]), never on which other points share the call or on batch_size."""
        _check(n0, n, alpha, batch_size)
        if len(indices) != len(x):
            raise ParamError(f"got {len(indices)} indices for {len(x)} inputs")
        counts0, counts = self.noise_counts(x, n0, n, batch_size, point_generators(seed, indices, x.device))
        cls, radius = self.certify_from_counts(counts0, counts, alpha)
        return cls, radius, self.predict_from_counts(counts, alpha)


# -- a resumable dataset runner -------------------------------------------------------------------
def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # a module's extra state
            h.update(repr(t).encode())
    return h.hexdigest()


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
            "model": _fingerprint(smooth.base_classifier)}


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
    _check(n0, n, alpha, batch_size)
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
    from .train import source_fingerprint   # the partial file resumes only under the same code
    key = {**certify_settings(smooth, n0, n, alpha, seed), "code": source_fingerprint()}
    labels = dict(zip(idx.tolist(), y.tolist()))
    done = _read_partial(partial, meta, key, labels)
    if done is None:
        done = pd.DataFrame({c: pd.Series(dtype=t) for c, t in CERTIFIED_DTYPES.items()})
        save_json(key, meta)
    save_csv(done, partial)  # a clean file (no torn line) to append to
    done_set = set(done["index"].tolist())
    todo = [j for j, i in enumerate(idx.tolist()) if i not in done_set]
    model = smooth.base_classifier
    with open(partial, "a") as f, tqdm(total=len(idx), initial=len(idx) - len(todo), desc="certify",
                                       unit="pt", disable=not progress) as bar:
        for g in range(0, len(todo), points_per_call):
            pos = torch.tensor(todo[g:g + points_per_call])
            xs = x[pos]
            was_training = model.training
            model.eval()
            try:
                with torch.inference_mode():
                    conf, pred = torch.cat([F.softmax(model(xs[i:i + batch_size]), 1)
                                            for i in range(0, len(xs), batch_size)]).max(1)
            finally:
                model.train(was_training)
            cls, radius, spred = smooth.certify_points(xs, idx[pos], seed, n0, n, alpha, batch_size)
            rows = pd.DataFrame({"index": idx[pos].numpy(), "label": y[pos].numpy(),
                                 "pred": pred.cpu().numpy(), "conf": conf.double().cpu().numpy(),
                                 "smooth_pred": spred.cpu().numpy(), "cert_pred": cls.cpu().numpy(),
                                 "cert_radius": radius.cpu().numpy()})[CERTIFIED_COLUMNS]
            rows.to_csv(f, header=False, index=False)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(pos))
    df = pd.read_csv(partial, **EXACT_READ).astype(CERTIFIED_DTYPES)
    df = df[df["index"].isin(labels)].drop_duplicates("index").sort_values("index", kind="stable")
    df = df.reset_index(drop=True)[CERTIFIED_COLUMNS]
    if len(df) != len(idx):
        raise RuntimeError(f"{partial} holds {len(df)} of {len(idx)} points after the run")
    save_csv(df, out_path)
    partial.unlink()
    meta.unlink()
    return df
