"""A stage's independent pieces of work (chunks of points to attack or certify, the splits of a
training batch) spread over worker processes at one CPU thread each.

When processes pay: on the default's 2 cores, for attacks and certification (the evaluate stage on
the robust base: 0.76x the wall time of one process at two threads), and for independent training
runs (two processes sharing the same TRADES steps: about 0.8x); not for the steps of one training
run, which must wait for each other: one process at two threads trained as fast as two processes over
the batch's splits, and faster in the pipeline. ``python bench/bench_parallel.py`` prints these
ratios; :data:`THREADS` and :data:`TRAIN_THREADS` follow them.

Guarantees
* The results do not depend on the number of workers: the caller fixes the pieces (never from the
  worker count), every piece is computed at :func:`piece_threads` threads (one) whichever process
  runs it, draws only from seeds derived from its own index (:func:`piece_seed`), and :func:`pmap`
  returns the results in the pieces' order. So 1 worker, 2 workers and a killed-and-resumed run
  write the same bytes.
* Workers are forked from the stage's process (no second start-up: they share its imported torch,
  its model and its data), show no progress bars of their own (the parent's bar counts the pieces)
  and die with their parent; a worker that dies (killed, out of memory) fails the stage
  (``BrokenProcessPool``) instead of hanging it.
* An exception in a piece is raised in the parent, with its type and message.

``RA_WORKERS`` sets the number of workers on the CPU; by default one per CPU core this process may
use. A stage computing on a GPU uses one (a forked process cannot use CUDA; more GPUs are more stages).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from .errors import ParamError

T = TypeVar("T")
R = TypeVar("R")

#: intra-op threads of a piece of work, in a worker or in the stage's own process, and of the stages
#: made of pieces: results depend on the thread count (bench/bench_isa.py), so it is fixed
THREADS = 1
#: intra-op threads of the training stages (one run's steps, one after the other): fixed too
TRAIN_THREADS = 2
#: environment variables: the number of worker processes of a stage; a thread count for benchmarks
WORKERS_ENV, THREADS_ENV = "RA_WORKERS", "RA_THREADS"


def worker_count(device: Any = None) -> int:
    """The workers a stage spreads its pieces over: 1 on a GPU ``device``; else ``RA_WORKERS`` if
    set, else one per usable CPU core."""
    if device is not None and str(getattr(device, "type", device)).startswith("cuda"):
        return 1
    env = os.environ.get(WORKERS_ENV)
    if env is not None:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ParamError(f"{WORKERS_ENV} must be a positive integer, got {env!r}")
        return n
    return max(1, len(os.sched_getaffinity(0)))


def piece_seed(seed: int, piece: int) -> int:
    """The seed of piece ``piece`` of a run seeded ``seed``: ``seed`` itself for piece 0 (a run of one
    piece draws what an unsplit run does), an independent SeedSequence stream for the others (below
    2**31, so every library accepts it)."""
    if piece == 0:
        return int(seed)
    from .seeds import stream_seed
    return stream_seed(seed, piece) % 2**31


def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive pieces of ``size`` (the last one shorter): the pieces depend
    on ``n`` and ``size`` only."""
    if size < 1:
        raise ParamError(f"chunk size must be positive, got {size}")
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


def set_pieces(sizes: Mapping[str, int], size: int) -> list[tuple[str, int, range]]:
    """The pieces of several sets of points: ``(set name, k, rows)`` for piece ``k`` of each set
    (:func:`chunks` of ``size``), sets in order."""
    return [(name, k, r) for name, n in sizes.items() for k, r in enumerate(chunks(n, size))]


def by_set(pieces: Sequence[tuple[str, int, range]], results: Sequence[R]) -> dict[str, list[R]]:
    """The results of :func:`set_pieces`'s pieces grouped by set, each set's in piece order."""
    out: dict[str, list[R]] = {}
    for (name, _, _), res in zip(pieces, results):
        out.setdefault(name, []).append(res)
    return out


def piece_threads() -> int:
    """Intra-op threads of a piece: :data:`THREADS` (``RA_THREADS`` overrides it, for benchmarks; the
    results then depend on it, not on the workers)."""
    return int(os.environ.get(THREADS_ENV, THREADS))


def set_threads(n: int = THREADS) -> None:
    """Run torch at ``n`` intra-op threads (``RA_THREADS`` overrides, for benchmarks)."""
    import torch
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, n)))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Torch at ``n`` intra-op threads inside the block, its previous count afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_TASK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None
_IN_WORKER = False


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a killed stage leaves no worker behind)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def quiet_progress() -> None:
    """Silence tqdm bars in this process (a worker: the parent's bar counts its pieces)."""
    from tqdm import std
    init = std.tqdm.__init__
    if getattr(init, "_ra_quiet", False):
        return

    def quiet(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)
    quiet._ra_quiet = True  # type: ignore[attr-defined]
    std.tqdm.__init__ = quiet  # type: ignore[method-assign]


def worker_init() -> None:
    """What every forked worker does first: die with its parent, :func:`piece_threads` threads, no
    bars, and no pools of its own (a worker runs a nested :func:`pimap` in itself)."""
    global _IN_WORKER
    _IN_WORKER = True
    _die_with_parent()
    set_threads(piece_threads())
    quiet_progress()


def _call(i: int) -> Any:
    assert _TASK is not None
    fn, items = _TASK
    return fn(items[i])


def pimap(fn: Callable[[T], R], items: Iterable[T], desc: str | None = None, device: Any = None,
          workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for each of ``items``, yielded in the items' order, the items spread over
    :func:`worker_count` forked worker processes for ``device`` (``workers`` overrides it), each
    computed at :func:`piece_threads` threads. ``fn`` may be any callable, closures included (the
    workers are forked after it exists). With one worker, or one item, all runs in this process.
    ``desc``: a tqdm bar over the items. Close the iterator (or exhaust it) to free the workers."""
    from tqdm.auto import tqdm

    global _TASK
    items = list(items)
    n = min(workers if workers is not None else worker_count(device), len(items))
    bar = dict(total=len(items), desc=desc, disable=desc is None, mininterval=2, leave=False)
    if n <= 1 or _IN_WORKER or _TASK is not None:   # (a pool's piece running a pool: in itself)
        for it in tqdm(items, **bar):
            with threads(piece_threads()):   # as a worker computes it
                out = fn(it)
            yield out
        return
    _TASK = (fn, items)
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("fork"), initializer=worker_init)
    try:
        yield from tqdm(pool.map(_call, range(len(items))), **bar)
    finally:   # (on an error, the pieces not yet started are dropped)
        pool.shutdown(wait=True, cancel_futures=True)
        _TASK = None


def pmap(fn: Callable[[T], R], items: Iterable[T], desc: str | None = None, device: Any = None,
         workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]`` through :func:`pimap` (worker processes, results in order)."""
    return list(pimap(fn, items, desc, device, workers))
