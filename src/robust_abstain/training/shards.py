"""Data-parallel training steps: a batch's gradient as the sum over ``train.shards`` fixed shards,
the shards spread over worker processes at one thread each (:mod:`robust_abstain.parallel`).

Guarantees
* The weights do not depend on the number of processes. Shard ``s`` of a batch is always the same
  points (``torch.tensor_split``), draws from its own streams (the loss's generator and the global
  RNGs, seeded from ``(seed, epoch, batch, s)``), and its gradient is that of its share of the batch
  loss (its mean loss times ``len(shard) / len(batch)``); the gradients are summed in shard order,
  whichever process computed them. One process computing both shards gets the same bits as two.
* Every process takes the same optimiser step on the same summed gradient, so the replicas stay
  equal; only rank 0 (the stage's process) validates, saves and logs.
* A non-finite loss on any shard stops every process (:class:`TrainingDivergedError` in rank 0).
* Workers are forked from the stage's process after its setup (no start-up of their own), die with
  it, and are killed when it leaves the fit by an exception.

For a loss that is a mean over points (all of the project's), the summed gradient is the batch
loss's gradient up to float rounding; with batch norm, each shard would normalise by its own
statistics, so the paper profile's GPU runs keep ``shards: 1``."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import TrainingDivergedError
from ..losses import LossConfig, LossFn
from ..seeds import stream_seed
from .batches import seed_global_rngs

#: the per-shard streams of :func:`shard_seed`
SHARD_LOSS, SHARD_GLOBAL = 2, 3


def shard_seed(seed: int, epoch: int, batch: int, shard: int, stream: int) -> int:
    """The seed of ``stream`` (``SHARD_LOSS``: the loss's draws; ``SHARD_GLOBAL``: the global RNGs)
    of shard ``shard`` of batch ``batch`` in epoch ``epoch``."""
    return stream_seed(seed, epoch, batch, stream, shard)


@dataclass
class ShardGroup:
    """The processes of one data-parallel fit: this one is ``rank`` of ``world``; shard ``s`` belongs
    to rank ``s % world``."""

    rank: int = 0
    world: int = 1

    def mine(self, shards: int) -> list[int]:
        return list(range(self.rank, shards, self.world))

    def gather(self, rows: torch.Tensor, shards: int) -> torch.Tensor:
        """Every shard's row, in shard order, from this process's rows (its :meth:`mine` shards)."""
        if self.world == 1:
            return rows
        import torch.distributed as dist
        per = math.ceil(shards / self.world)
        mine = torch.zeros(per, rows.shape[1], dtype=rows.dtype)
        mine[:len(rows)] = rows
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        return torch.stack([parts[s % self.world][s // self.world] for s in range(shards)])


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def _set_grad(model: nn.Module, flat: torch.Tensor) -> None:
    at = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).to(p.dtype).clone()
        at += n


def sharded_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
                 x: torch.Tensor, y: torch.Tensor, shards: int, seed: int, epoch: int, batch: int,
                 group: ShardGroup, amp_dtype: torch.dtype | None = None) -> tuple[float, dict[str, float]]:
    """One optimisation step on the batch ``(x, y)`` over ``shards`` shards (this process computes
    ``group.mine(shards)``); returns the batch's (loss, stats), shard-weighted means."""
    device = x.device
    xs, ys = torch.tensor_split(x, shards), torch.tensor_split(y, shards)
    rows, keys = [], None
    for s in group.mine(shards):
        seed_global_rngs(shard_seed(seed, epoch, batch, s, SHARD_GLOBAL), device)
        g = torch.Generator(device=device).manual_seed(shard_seed(seed, epoch, batch, s, SHARD_LOSS))
        autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss, stats = loss_fn(model, xs[s], ys[s], loss_cfg, g)
        w = len(ys[s]) / len(y)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            (loss * w).backward()
        keys = list(stats)
        rows.append(torch.cat([_flat_grad(model).detach().float().cpu(),
                               torch.tensor([loss.item(), w] + [stats[k] for k in keys])]))
    full = group.gather(torch.stack(rows), shards)
    n_param = full.shape[1] - 2 - len(keys or [])
    losses = full[:, n_param]
    if not torch.isfinite(losses).all():
        raise TrainingDivergedError(f"non-finite loss ({losses.tolist()} over the shards)")
    total = full[0, :n_param].clone()
    for s in range(1, shards):   # in shard order, whichever process computed each
        total += full[s, :n_param]
    _set_grad(model, total.to(device))
    opt.step()
    weights = full[:, n_param + 1]
    mean = lambda col: float((full[:, col] * weights).sum())  # noqa: E731
    return mean(n_param), {k: mean(n_param + 2 + i) for i, k in enumerate(keys or [])}


@contextlib.contextmanager
def shard_workers(world: int, follow: Callable[[ShardGroup], None]) -> Iterator[ShardGroup]:
    """This process as rank 0 of ``world`` processes; ranks 1.. are forked here and run
    ``follow(group)`` (their share of every step), then exit. Yields rank 0's group. The
    workers are killed if the block raises, and waited for when it ends."""
    if world <= 1:
        yield ShardGroup()
        return
    import torch.distributed as dist
    from ..parallel import worker_init
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no hostname lookup
    with tempfile.TemporaryDirectory(prefix="ra-shards-") as tmp:
        store = os.path.join(tmp, "store")
        pids = []
        for rank in range(1, world):
            pid = os.fork()
            if pid == 0:   # a worker: its share of every step, then leave without cleanup
                code = 1
                try:
                    worker_init()
                    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank,
                                            world_size=world)
                    follow(ShardGroup(rank, world))
                    code = 0
                except TrainingDivergedError:
                    code = 0   # rank 0 reports it
                finally:
                    os._exit(code)
            pids.append(pid)
        ok = False
        try:
            dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=0, world_size=world)
            yield ShardGroup(0, world)
            ok = True
        finally:
            if not ok:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
            for pid in pids:
                _, status = os.waitpid(pid, 0)
                if ok and status != 0:
                    raise RuntimeError(f"a training worker (pid {pid}) failed (status {status})")
            if dist.is_initialized():
                dist.destroy_process_group()
