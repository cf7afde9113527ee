"""The (fine-)tuning loop: the paper's schedule, model selection on the validation split, and exact
resume after a kill.

Guarantees
* Exact resume: every random stream of a training step is derived from ``(seed, epoch)`` or
  ``(seed, epoch, batch)``, never carried over from earlier epochs in memory: the data order and
  the loss's draws (PGD random starts, noise) come from a generator seeded per epoch on the
  training device, augmentation from one per batch, and torch's, numpy's and Python's global RNGs
  (dropout, if a model has it) are re-seeded before every batch. Validation draws from its own
  fixed seed. So a run killed at any point and resumed from its last finished epoch ends with the
  same weights, bit for bit, as an uninterrupted one. The caller's global RNG states are restored
  when :func:`fit` returns.
* The resume state is keyed by the configs, the initial weights, the training and validation data
  and the package's source code (:func:`source_fingerprint`): a state made by other code or data is
  removed, never resumed. :func:`fit` removes its state when it returns; states live under
  ``state/`` (:data:`STATE_DIR`, gitignored), one per output (:func:`state_dir_for`).
* Never selects on the test set: ``select`` ranks epochs on the validation split only.
* A non-finite loss stops training with :class:`TrainingDivergedError`; the last good epoch's
  state stays on disk for inspection, and no final model is written.
* Augmentation (``augment``) of batch ``b`` in epoch ``e`` draws only from its own generator,
  seeded from ``(seed, e, b)``, so the augmented batches, and hence the trained weights, are the
  same whatever the number of DataLoader ``workers``. Without augmentation the batches are exactly
  those of the shared per-epoch generator.
* Mixed precision (``amp="bf16"`` / ``"fp16"``) covers only the training loss, including the
  inner attack that the loss runs; the weights, the optimiser and validation stay fp32. Evaluation
  attacks (APGD, PGD) and certification elsewhere in the project always run in fp32: low-precision
  gradients can weaken an attack, which would overstate robust accuracy.

For tests only: ``RA_TEST_KILL_AT=E:B`` (env) makes the process SIGKILL itself just before batch
``B`` of epoch ``E`` (both 1-based), i.e. in mid-epoch, after batches 1..B-1 have changed the
weights in memory: a real kill at an exact place (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..device import resolve_device
from ..errors import TrainingDivergedError
from ..io import save_checkpoint
from ..losses import LossConfig, LossFn, Stats, get_loss
from ..parallel import piece_threads, threads, worker_count
from .batches import (GLOBAL, EpochBatches, batch_seed, epoch_streams, global_rngs_restored, iterate_batches,
                      seed_global_rngs, seeded_subset)
from .config import AMP, TrainConfig, budget, lr_at, make_optimizer
from .resume import _kill_point, _resume, resume_key
from .data_parallel import Replicas, replica_workers, split_step
from .validate import _score, validate


def train_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
               x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
               amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None
               ) -> tuple[torch.Tensor, Stats]:
    """One optimisation step of :func:`fit` on the batch ``(x, y)``; returns (loss, stats).

    With ``amp_dtype`` only the loss (including its inner attack) runs under
    :func:`torch.autocast`; with ``scaler`` (fp16) the step goes through the gradient scaler.
    A non-finite loss raises :class:`TrainingDivergedError` before any weight changes."""
    autocast = (torch.autocast(device_type=x.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        loss, stats = loss_fn(model, x, y, loss_cfg, generator)
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"non-finite loss ({loss.item()})")
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss, stats


def batch_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
               x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, epoch: int, batch: int,
               loss_g: torch.Generator | None, replicas: Replicas | None = None,
               amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None
               ) -> tuple[float, Stats]:
    """Step ``batch`` of epoch ``epoch`` on ``(x, y)``: with one split :func:`train_step` (the loss
    drawing from the epoch's ``loss_g``, the global RNGs seeded per batch), else
    :func:`~.data_parallel.split_step` over ``cfg.batch_splits`` splits (this process's share of
    ``replicas``). Returns (loss, stats)."""
    if cfg.batch_splits > 1:
        return split_step(model, opt, loss_fn, loss_cfg, x, y, cfg.batch_splits, cfg.seed, epoch, batch,
                          replicas or Replicas(), amp_dtype)
    seed_global_rngs(batch_seed(cfg.seed, epoch, batch, GLOBAL), x.device)
    loss, stats = train_step(model, opt, loss_fn, loss_cfg, x, y, loss_g, amp_dtype, scaler)
    return loss.item(), stats


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
                 train: TensorDataset, cfg: TrainConfig, epoch: int, device: torch.device,
                 amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, desc: str,
                 state_path: Path, max_batches: int | None = None, replicas: Replicas | None = None
                 ) -> dict[str, float]:
    """Epoch ``epoch`` (0-based) of :func:`fit`; returns the mean of each training stat.

    Its randomness depends only on (seed, epoch, batch): the data order comes from a CPU generator
    seeded from (seed, epoch); with one split the loss draws from that generator, after the
    permutation, on CPU, and from one with the same seed on another ``device``, and the global RNGs
    are seeded per batch; with ``cfg.batch_splits`` > 1 each split of a batch has its own streams
    (:func:`~.data_parallel.split_step`, this process's share of ``replicas``). ``max_batches`` keeps
    the epoch's first batches only (same order and draws as a whole epoch)."""
    for param_group in opt.param_groups:
        param_group["lr"] = lr_at(cfg, epoch)
    x, y = train.tensors
    perm, loss_g = epoch_streams(cfg.seed, epoch, len(y), device)
    model.train()
    kill_at = _kill_point()
    sums: dict[str, float] = {}
    if max_batches is not None:  # the last epoch of a budget in steps: its first batches only
        perm = perm[:max_batches * cfg.batch_size]
    batches = EpochBatches(x, y, perm, cfg.batch_size, cfg.augment, cfg.seed, epoch)
    bar = tqdm(enumerate(iterate_batches(batches, cfg.workers, device)), total=len(batches),
               desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2)
    for b, (xb, yb) in bar:
        if kill_at == (epoch + 1, b + 1) and (replicas is None or replicas.rank == 0):
            os.kill(os.getpid(), signal.SIGKILL)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        try:
            loss, stats = batch_step(model, opt, loss_fn, loss_cfg, xb, yb, cfg, epoch, b, loss_g, replicas,
                                     amp_dtype, scaler)
        except TrainingDivergedError as e:
            raise TrainingDivergedError(
                f"[{desc}] {e} at epoch {epoch + 1}, batch {b + 1}; lower the learning rate "
                f"(lr={cfg.lr}) or check the data. Last good state: {state_path}") from None
        for k, v in {"loss": loss, **stats}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    return {f"train_{k}": v / len(batches) for k, v in sums.items()}


def fit(model: nn.Module, loss_cfg: LossConfig, train: TensorDataset, val: TensorDataset,
        cfg: TrainConfig, state_path: str | Path, log: Callable[[int, dict], None] | None = None,
        desc: str = "train", fine_tune: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` with ``loss_cfg`` and return (the selected model, per-epoch history).

    ``state_path`` holds the resumable state (weights, optimiser, fp16 gradient scaler,
    best-so-far, history), written atomically after every epoch. A state with the same
    :func:`resume_key` (configs, initial weights, data, package code) is resumed, and the run then
    ends with the same weights as an uninterrupted one; any other state is removed. The state is
    removed when ``fit`` returns, and kept when it raises (e.g. :class:`TrainingDivergedError`).

    ``cfg.amp``: ``"bf16"`` / ``"fp16"`` run only the training loss (its forward passes and its
    inner attack, e.g. TRADES's PGD) under :func:`torch.autocast`; the backward pass, the
    optimiser step, the fp32 weights and :func:`validate` are unchanged. ``"fp16"`` adds a
    :class:`torch.amp.GradScaler`: steps with overflowing gradients are skipped and the scale
    lowered, as usual; a non-finite *loss* still raises :class:`TrainingDivergedError`. Evaluation
    attacks and certification never use this: they always run in fp32, since low-precision
    gradients can weaken an attack and so overstate robust accuracy.

    ``cfg.workers``: processes that prepare (gather and augment) the batches ahead of the model
    step; the weights do not depend on it (see :class:`EpochBatches`).

    ``cfg.batch_splits`` > 1: each batch's gradient is the sum over that many splits, computed by
    :func:`~robust_abstain.parallel.worker_count` processes at one thread each (forked here, at most
    one per split); the weights do not depend on the number of processes (:mod:`.data_parallel`).

    The initial model is validated as epoch 0 (``history[0]``). With ``fine_tune`` it is also a
    candidate of selection, so a fine-tune that only makes the validation criterion worse keeps the
    initial weights, and ``cfg.max_nat_drop`` refuses epochs that lose more validation accuracy than
    that against it; from scratch (a random start) it is never selected."""
    loss_fn = get_loss(loss_cfg.name)
    train = seeded_subset(train, cfg.n_train, cfg.seed)
    val = seeded_subset(val, cfg.n_val, cfg.seed + 1)
    init_sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = resume_key(loss_cfg, cfg, init_sd, train, val)
    plan = budget(cfg, len(train))
    opt = make_optimizer(model, plan)
    device = resolve_device(cfg.device)
    amp_dtype = AMP[cfg.amp]
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    state_path = Path(state_path)
    model.to(device)
    st = _resume(state_path, key, model, opt, scaler, desc, plan.epochs)
    if st is None:  # epoch 0: the initial model, a candidate of selection like every epoch
        m0 = validate(model, val, loss_cfg, seed=cfg.seed + 7, device=device)
        st = {"epoch": 0, "history": [{"epoch": 0, **m0, "selected": 1.0}],
              "best": copy.deepcopy(init_sd),
              "best_score": _score(m0, cfg.select, -1) if fine_tune else -math.inf}
    start, history, best, best_score = st["epoch"], st["history"], st["best"], st["best_score"]
    init_nat = history[0]["val_nat_acc"]

    def epoch_of(e: int, replicas: Replicas) -> dict[str, float]:
        last = e == plan.epochs - 1
        return _train_epoch(model, opt, loss_fn, loss_cfg, train, plan, e, device, amp_dtype, scaler, desc,
                            state_path, plan.last_batches if last else None, replicas)

    def follow(replicas: Replicas) -> None:   # a worker: its share of every remaining step
        for e in range(start, plan.epochs):
            epoch_of(e, replicas)

    world = min(worker_count(device), plan.batch_splits) if start < plan.epochs else 1
    # splits are computed at one thread, in whichever process (the weights do not depend on the workers)
    with global_rngs_restored(device), replica_workers(world, follow) as replicas, \
            threads(piece_threads()) if plan.batch_splits > 1 else contextlib.nullcontext():
        for epoch in range(start, plan.epochs):
            metrics = epoch_of(epoch, replicas)
            metrics.update(validate(model, val, loss_cfg, seed=cfg.seed + 7, device=device))
            metrics["lr"] = lr_at(plan, epoch)
            score = _score(metrics, cfg.select, epoch)
            eligible = (not fine_tune or cfg.max_nat_drop is None
                        or metrics["val_nat_acc"] >= init_nat - cfg.max_nat_drop - TOLERANCE)
            if eligible and score >= best_score:
                best_score, best = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
                for h in history:
                    h["selected"] = 0.0
            metrics["selected"] = float(eligible and score == best_score)
            history.append({"epoch": epoch + 1, **metrics})
            if log is not None:
                log(epoch + 1, metrics)
            print(f"[{desc}] epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            state = {"key": key, "epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "history": history, "best": best,
                     "best_score": best_score}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(state, state_path)
    if fine_tune:
        _warn_selection(history, desc, cfg.select)
    model.load_state_dict(best)
    model.eval()
    state_path.unlink(missing_ok=True)
    return model.cpu(), history


#: the selected model losing more validation accuracy than this against the initial one is warned of
WARN_NAT_DROP = 0.03
#: accuracy comparisons ignore float rounding (0.80 - 0.77 is 0.030000000000000027)
TOLERANCE = 1e-9


def _warn_selection(history: list[dict], desc: str, select: str) -> None:
    """Say when selection kept the initial weights, or when the selected epoch lost more than
    :data:`WARN_NAT_DROP` validation accuracy against the initial model."""
    chosen = max((h for h in history if h.get("selected")), key=lambda h: h["epoch"], default=history[0])
    drop = history[0]["val_nat_acc"] - chosen["val_nat_acc"]
    if chosen["epoch"] == 0 and len(history) > 1:  # (only fine-tunes select epoch 0)
        print(f"[{desc}] warning: no epoch improved the validation criterion ({select}) on the "
              f"initial model within the accuracy guard; keeping the initial weights")
    elif drop > WARN_NAT_DROP + TOLERANCE:
        print(f"[{desc}] warning: the selected epoch {chosen['epoch']} loses {100 * drop:.1f} points "
              f"of validation accuracy against the initial model")
