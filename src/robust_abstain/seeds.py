"""Every derived seed of the project, in one place.

A stream of random numbers is named by integers (a seed and where it is used: an epoch, a batch, a
test point) and gets its own seed from numpy's :class:`~numpy.random.SeedSequence`, so streams are
independent and a resumed or sharded run draws exactly what an uninterrupted one does."""

from __future__ import annotations

import numpy as np


def stream_seed(*entropy: int) -> int:
    """The 64-bit seed of the stream named by ``entropy`` (e.g. ``(seed, epoch, batch)``)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's data order and of its loss draws (training). Not a SeedSequence: the
    trained models of every profile depend on this value, so it stays as it is."""
    return seed * 100003 + epoch
