"""A stage's independent pieces of work (chunks of points to attack or certify, the shards of a
training batch) spread over worker processes at one CPU thread each.

Why processes and not threads: the default's models are too small for a second intra-op thread to
pay. On 2 cores, two processes at one thread each did the same TRADES steps in about 0.7x the wall
time of one process at two threads (``python bench/bench_parallel.py`` prints the ratio).

Guarantees
* The results do not depend on the number of workers: the caller fixes the pieces (never from the
  worker count), every process computes at one thread (:data:`THREADS`), a piece draws only from
  seeds derived from its own index (:func:`piece_seed`), and :func:`pmap` returns the results in
  the pieces' order. So 1 worker, 2 workers and a killed-and-resumed run write the same bytes.
* Workers are forked from the stage's process (no second start-up: they share its imported torch,
  its model and its data), run at one thread, show no progress bars of their own (the parent's bar
  counts the pieces) and die with their parent.
* An exception in a piece is raised in the parent (the pool is closed first).

``RA_WORKERS`` sets the number of workers; by default one per CPU core this process may use on the
CPU, and 1 when the stage computes on a GPU (one GPU per stage; more GPUs are more stages).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import ParamError

T = TypeVar("T")
R = TypeVar("R")

#: intra-op threads of a piece of work, in a worker or in the stage's own process, and of the stages
#: made of pieces: results depend on the thread count (bench/bench_isa.py), so it is fixed
THREADS = 1
#: intra-op threads of the training stages (one model's steps, one after the other): on 2 cores one
#: process at 2 threads trained as fast as two at one thread over the batch's shards, and faster in the
#: pipeline (bench/bench_parallel.py), so training keeps one process; fixed too, as it changes the numbers
TRAIN_THREADS = 2
#: environment variable: the number of worker processes of a stage
WORKERS_ENV = "RA_WORKERS"


def worker_count(device: Any = None) -> int:
    """The workers a stage spreads its pieces over: ``RA_WORKERS`` if set, else 1 on a GPU
    ``device`` and one per usable CPU core otherwise."""
    env = os.environ.get(WORKERS_ENV)
    if env is not None:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ParamError(f"{WORKERS_ENV} must be a positive integer, got {env!r}")
        return n
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        return 1
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


def set_threads(n: int = THREADS) -> None:
    """Run torch at ``n`` intra-op threads (``RA_THREADS`` overrides, for benchmarks)."""
    import torch
    torch.set_num_threads(int(os.environ.get("RA_THREADS", n)))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Torch at ``n`` intra-op threads inside the block (no ``RA_THREADS`` override: results depend
    on it), its previous count afterwards."""
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
    """What every forked worker does first: die with its parent, one thread, no bars, and no pools
    of its own (a worker runs a nested :func:`pimap` in itself)."""
    global _IN_WORKER
    _IN_WORKER = True
    _die_with_parent()
    set_threads()
    quiet_progress()


def _call(i: int) -> Any:
    assert _TASK is not None
    fn, items = _TASK
    return fn(items[i])


def pimap(fn: Callable[[T], R], items: Iterable[T], desc: str | None = None, workers: int | None = None,
          device: Any = None) -> Iterator[R]:
    """``fn(item)`` for each of ``items``, yielded in the items' order as they finish, the items
    spread over :func:`worker_count` forked worker processes (``workers`` overrides it). ``fn`` may
    be any callable, closures included (the workers are forked after it exists). With one worker, or
    one item, all runs in this process. ``desc``: a tqdm bar over the items."""
    from tqdm.auto import tqdm

    global _TASK
    items = list(items)
    n = min(workers if workers is not None else worker_count(device), len(items))
    bar = dict(total=len(items), desc=desc, disable=desc is None, mininterval=2, leave=False)
    if n <= 1 or _IN_WORKER or _TASK is not None:   # (a pool's piece running a pool: in itself)
        for it in tqdm(items, **bar):
            with threads(int(os.environ.get("RA_THREADS", THREADS))):   # as a worker computes it
                out = fn(it)
            yield out
        return
    _TASK = (fn, items)
    try:
        with mp.get_context("fork").Pool(n, initializer=worker_init) as pool:
            yield from tqdm(pool.imap(_call, range(len(items))), **bar)
    finally:
        _TASK = None


def pmap(fn: Callable[[T], R], items: Iterable[T], desc: str | None = None, workers: int | None = None,
         device: Any = None) -> list[R]:
    """``[fn(item) for item in items]`` through :func:`pimap` (worker processes, results in order)."""
    return list(pimap(fn, items, desc, workers, device))
