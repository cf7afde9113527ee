"""What a training step draws: the data order, the batches (augmented) and every random stream,
each derived from ``(seed, epoch)`` or ``(seed, epoch, batch)`` only (see :mod:`robust_abstain.seeds`),
so a resumed run draws exactly what an uninterrupted one does."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..seeds import epoch_seed, stream_seed


def _augment(x: torch.Tensor, policy: str | None, g: torch.Generator) -> torch.Tensor:
    if policy in (None, "none"):
        return x
    from ..data.augment import augment_batch
    if policy == "crop_flip":
        return augment_batch(x, None, g, random_crop_flip=True)
    return augment_batch(x, policy, g)


AUGMENT, GLOBAL = 0, 1  # the per-batch streams of batch_seed


def batch_seed(seed: int, epoch: int, batch: int, stream: int = AUGMENT) -> int:
    """The seed of ``stream`` (``AUGMENT``: the batch's augmentation; ``GLOBAL``: the global RNGs
    during its step) for batch ``batch`` of epoch ``epoch``: independent streams via numpy's
    SeedSequence, as elsewhere in the project."""
    entropy = (seed, epoch, batch) if stream == AUGMENT else (seed, epoch, batch, stream)
    return stream_seed(*entropy)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def epoch_streams(seed: int, epoch: int, n: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Generator]:
    """Epoch ``epoch``'s data order (a CPU permutation of ``n`` points) and the generator of the
    loss's draws in it: the same CPU generator after the permutation, or on another ``device`` one
    with the same seed. Both depend only on (seed, epoch)."""
    g = _generator(torch.device("cpu"), epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)
    return perm, g if device.type == "cpu" else _generator(device, epoch_seed(seed, epoch))


def seed_global_rngs(seed: int, device: torch.device) -> None:
    """Seed torch's global RNG (CPU, and ``device`` when it is a CUDA device), numpy's and Python's."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def global_rngs_restored(device: torch.device) -> Iterator[None]:
    """Restore torch's (CPU and ``device``), numpy's and Python's global RNG states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochBatches(Dataset):
    """One epoch's training batches as a map-style dataset: item ``b`` is ``(x, y)`` of the
    indices ``perm[b * batch_size:(b + 1) * batch_size]``, augmented with a generator seeded from
    ``(seed, epoch, b)`` only, so an item is the same in any process and in any order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int,
                 augment: str | None, seed: int, epoch: int):
        self.x, self.y, self.perm, self.batch_size = x, y, perm, batch_size
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return math.ceil(len(self.perm) / self.batch_size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(b)
        idx = self.perm[b * self.batch_size:(b + 1) * self.batch_size]
        xb = self.x[idx]
        if self.augment not in (None, "none"):
            gen = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, b))
            xb = _augment(xb, self.augment, gen)
        return xb, self.y[idx]


def iterate_batches(ds: EpochBatches, workers: int, device: torch.device
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``ds``'s batches in order: in this process (``workers == 0``) or prepared ahead by a
    :class:`~torch.utils.data.DataLoader` with ``workers`` processes (pinned memory on CUDA), so
    augmentation overlaps with the model step. The batches are identical either way."""
    if workers == 0:
        return (ds[b] for b in range(len(ds)))
    return iter(DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                           pin_memory=device.type == "cuda", prefetch_factor=4))


def seeded_subset(ds: TensorDataset, n: int | None, seed: int) -> TensorDataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return TensorDataset(*(t[idx] for t in ds.tensors))
