"""Data-parallel training steps: a batch's gradient as the sum over ``train.batch_splits`` fixed
splits of the batch, the splits spread over worker processes at one thread each
(:mod:`robust_abstain.parallel`). An option (default 1: one process); on the default's 2 cores one
process at 2 threads trained as fast (``python bench/bench_parallel.py`` measures both).

Guarantees
* The weights do not depend on the number of processes. Split ``s`` of a batch is always the same
  points (``torch.tensor_split`` into ``min(batch_splits, batch size)`` parts), draws from its own
  streams (the loss's generator and the global RNGs, seeded from ``(seed, epoch, batch, s)``), is
  computed at one thread, and its gradient is that of its share of the batch loss (its mean loss
  times ``len(split) / len(batch)``); the gradients are summed in split order, whichever process
  computed them. One process computing both splits gets the same bits as two.
* Every process takes the same optimiser step on the same summed gradient, so the replicas stay
  equal; only rank 0 (the stage's process) validates, saves and logs.
* A non-finite loss on any split stops every process (:class:`TrainingDivergedError` in rank 0).
* Workers are forked from the stage's process after its setup (no start-up of their own), die with
  it, and are killed when it leaves the fit by an exception; a worker's own error is printed and
  fails the fit.

For a loss that is a mean over points (all of the project's), the summed gradient is the batch
loss's gradient up to float rounding; with batch norm, each split would normalise by its own
statistics, so the paper profile's GPU runs keep one split."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import TrainingDivergedError
from ..losses import LossConfig, LossFn, Stats
from ..seeds import stream_seed
from .batches import seed_global_rngs

#: the per-split streams of :func:`split_seed`
SPLIT_LOSS, SPLIT_GLOBAL = 2, 3


def split_seed(seed: int, epoch: int, batch: int, split: int, stream: int) -> int:
    """The seed of ``stream`` (``SPLIT_LOSS``: the loss's draws; ``SPLIT_GLOBAL``: the global RNGs)
    of split ``split`` of batch ``batch`` in epoch ``epoch``."""
    return stream_seed(seed, epoch, batch, stream, split)


@dataclass(frozen=True)
class Replicas:
    """The processes of one data-parallel fit: this one is ``rank`` of ``world``; split ``s`` belongs
    to rank ``s % world``."""

    rank: int = 0
    world: int = 1

    def mine(self, splits: int) -> list[int]:
        return list(range(self.rank, splits, self.world))

    def gather(self, rows: dict[int, tuple]) -> dict[int, tuple]:
        """Every split's row, from this process's rows (those of its :meth:`mine` splits)."""
        if self.world == 1:
            return rows
        import torch.distributed as dist
        parts: list[dict[int, tuple] | None] = [None] * self.world
        dist.all_gather_object(parts, rows)
        return {s: row for part in parts for s, row in (part or {}).items()}


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float().cpu()
                      for p in model.parameters()])


def _set_grad(model: nn.Module, flat: torch.Tensor) -> None:
    at = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).to(p.device, p.dtype).clone()
        at += n


def split_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
               x: torch.Tensor, y: torch.Tensor, splits: int, seed: int, epoch: int, batch: int,
               replicas: Replicas, amp_dtype: torch.dtype | None = None) -> tuple[float, Stats]:
    """One optimisation step on the batch ``(x, y)`` over ``splits`` splits (this process computes
    ``replicas.mine``); returns the batch's (loss, stats), split-weighted means."""
    device = x.device
    n = min(splits, len(y))
    xs, ys = torch.tensor_split(x, n), torch.tensor_split(y, n)
    rows = {}
    for s in replicas.mine(n):
        seed_global_rngs(split_seed(seed, epoch, batch, s, SPLIT_GLOBAL), device)
        g = torch.Generator(device=device).manual_seed(split_seed(seed, epoch, batch, s, SPLIT_LOSS))
        autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss, stats = loss_fn(model, xs[s], ys[s], loss_cfg, g)
        w = len(ys[s]) / len(y)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            (loss * w).backward()
        rows[s] = (_flat_grad(model), loss.item(), w, stats)
    full = replicas.gather(rows)
    losses = [full[s][1] for s in range(n)]
    if not all(torch.isfinite(torch.tensor(losses))):
        raise TrainingDivergedError(f"non-finite loss ({losses} over the batch's splits)")
    total = full[0][0].clone()
    for s in range(1, n):   # in split order, whichever process computed each
        total += full[s][0]
    _set_grad(model, total)
    opt.step()
    mean = lambda values: float(sum(full[s][2] * v for s, v in enumerate(values)))  # noqa: E731
    return mean(losses), {k: mean([full[s][3][k] for s in range(n)]) for k in full[0][3]}


def _follower(rank: int, world: int, store: str, follow: Callable[[Replicas], None]) -> None:
    """A forked worker: its share of every step, then leave without cleanup (never returns)."""
    import torch.distributed as dist
    from ..parallel import worker_init
    code = 1
    try:
        worker_init()
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
        follow(Replicas(rank, world))
        code = 0
    except TrainingDivergedError:
        code = 0   # rank 0 reports it
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@contextlib.contextmanager
def replica_workers(world: int, follow: Callable[[Replicas], None]) -> Iterator[Replicas]:
    """This process as rank 0 of ``world`` processes; ranks 1.. are forked here and run
    ``follow(replicas)`` (their share of every step), then exit. Yields rank 0's :class:`Replicas`.
    The workers are killed if the block raises, and waited for when it ends."""
    if world <= 1:
        yield Replicas()
        return
    import torch.distributed as dist
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no hostname lookup
    with tempfile.TemporaryDirectory(prefix="ra-replicas-") as tmp:
        store = os.path.join(tmp, "store")
        pids = []
        for rank in range(1, world):
            pid = os.fork()
            if pid == 0:
                _follower(rank, world, store, follow)
            pids.append(pid)
        ok = False
        try:
            dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=0, world_size=world)
            yield Replicas(0, world)
            ok = True
        finally:
            if not ok:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
            if dist.is_initialized():
                dist.destroy_process_group()
            if ok and failed:
                raise RuntimeError(f"training worker(s) {failed} failed (their error is printed above)")
