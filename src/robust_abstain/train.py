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
  those of the shared per-epoch generator, as before ``workers`` existed.
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
import functools
import hashlib
import json
import math
import os
import random
import signal
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .attacks.pgd import pgd
from .errors import CheckpointError, ParamError, TrainingDivergedError
from .io import load_checkpoint, save_checkpoint
from .losses import LossConfig, LossFn, Stats, get_loss
from .params import choice, count, non_negative, number, positive

SELECT = ["last", "val_loss", "val_nat_acc", "val_rob_acc", "val_rob_acc_minus_inacc"]
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1                # the budget in passes over the training subset, unless ``steps``
    steps: int | None = None       # the budget in optimiser steps (overrides epochs; follows the data)
    lr: float = 1e-3
    lr_decay_at: float = 0.75      # fraction of epochs after which lr *= lr_decay (paper: 75 %)
    lr_decay: float = 0.1
    batch_size: int = 200
    optimizer: str = "adam"        # "adam" | "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_train: int | None = None     # seeded subset of the training split (None: all)
    n_val: int | None = None       # seeded subset of the validation split
    select: str = "val_loss"
    max_nat_drop: float | None = None  # epochs losing more validation accuracy than this against
                                       # the initial model are never selected (fine-tuning guard)
    seed: int = 0
    augment: str | None = None     # None | "autoaugment" (the paper's CIFAR fine-tuning policy) | ...
    device: str = "auto"           # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:1" ...
    amp: str = "none"              # "none" | "bf16" | "fp16": autocast of the training loss only
    workers: int = 0               # DataLoader worker processes preparing (augmenting) batches

    @classmethod
    def from_params(cls, p: dict, prefix: str) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(p) - known)
        if unknown:
            raise ParamError(f"{prefix}: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**p)
        count(cfg.epochs, f"{prefix}.epochs")
        if cfg.steps is not None:
            count(cfg.steps, f"{prefix}.steps")
        if cfg.max_nat_drop is not None:
            number(cfg.max_nat_drop, f"{prefix}.max_nat_drop", min=0, max=1)
        positive(cfg.lr, f"{prefix}.lr")
        number(cfg.lr_decay_at, f"{prefix}.lr_decay_at", min=0, max=1)
        positive(cfg.lr_decay, f"{prefix}.lr_decay")
        count(cfg.batch_size, f"{prefix}.batch_size")
        choice(cfg.optimizer, f"{prefix}.optimizer", ["adam", "sgd"])
        non_negative(cfg.momentum, f"{prefix}.momentum")
        non_negative(cfg.weight_decay, f"{prefix}.weight_decay")
        if cfg.n_train is not None:
            count(cfg.n_train, f"{prefix}.n_train")
        if cfg.n_val is not None:
            count(cfg.n_val, f"{prefix}.n_val")
        choice(cfg.select, f"{prefix}.select", SELECT)
        if cfg.augment is not None:
            choice(cfg.augment, f"{prefix}.augment", ["none", "autoaugment", "autoaugment_imagenet",
                                                      "autoaugment_svhn", "crop_flip"])
        resolve_device(cfg.device, f"{prefix}.device")
        count(cfg.seed, f"{prefix}.seed", min=0)
        choice(cfg.amp, f"{prefix}.amp", list(AMP))
        count(cfg.workers, f"{prefix}.workers", min=0)
        return cfg


def resolve_device(device: str, key: str = "device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must name an available device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParamError(f"{key} must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"{key} is {device!r} but no CUDA device is available (use auto or cpu)")
    return dev


def _augment(x: torch.Tensor, policy: str | None, g: torch.Generator) -> torch.Tensor:
    if policy in (None, "none"):
        return x
    from .data.augment import augment_batch
    if policy == "crop_flip":
        return augment_batch(x, None, g, random_crop_flip=True)
    return augment_batch(x, policy, g)


AUGMENT, GLOBAL = 0, 1  # the per-batch streams of batch_seed


def batch_seed(seed: int, epoch: int, batch: int, stream: int = AUGMENT) -> int:
    """The seed of ``stream`` (``AUGMENT``: the batch's augmentation; ``GLOBAL``: the global RNGs
    during its step) for batch ``batch`` of epoch ``epoch``: independent streams via numpy's
    SeedSequence, as elsewhere in the project."""
    entropy = [seed, epoch, batch] if stream == AUGMENT else [seed, epoch, batch, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order and of the loss's draws in that epoch."""
    return seed * 100003 + epoch


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


STATE_DIR = Path("state")  # resume states, relative to the working directory (gitignored)
KILL_AT_ENV = "RA_TEST_KILL_AT"
PACKAGE_ROOT = Path(__file__).resolve().parent


def state_dir_for(out: str | Path) -> Path:
    """The folder of the resume state of the run that writes ``out``: :data:`STATE_DIR` followed by
    ``out``'s folder (``models/cert/headline.pt`` -> ``state/models/cert``), so two outputs with one
    name in two folders never share a state."""
    parent = Path(os.path.abspath(Path(out).parent))
    try:
        rel = parent.relative_to(Path.cwd())
    except ValueError:
        rel = parent.relative_to(parent.anchor)
    return STATE_DIR / rel


def sources_digest(root: Path) -> str:
    """sha256 of every ``.py`` file under ``root``: relative names and bytes."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        data = f.read_bytes()
        h.update(f"{f.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


@functools.cache
def source_fingerprint() -> str:
    """:func:`sources_digest` of the package (read once per process): part of the resume key, so
    a state made by other code (e.g. another ``losses.py``) is never resumed."""
    return sources_digest(PACKAGE_ROOT)


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the tensors' shapes, dtypes and values (in logical order, whatever the layout)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _state_key_cfg(cfg: TrainConfig) -> dict:
    """The part of ``cfg`` that identifies a resumable state (``workers`` does not change the result)."""
    d = asdict(cfg)
    del d["workers"]
    return d


def resume_key(loss_cfg: LossConfig, cfg: TrainConfig, init: dict[str, torch.Tensor],
               train: TensorDataset, val: TensorDataset) -> str:
    """What a resume state must match: configs, initial weights, data and the package's code."""
    return fingerprint(loss_cfg, _state_key_cfg(cfg), tensor_digest(init.values()),
                       tensor_digest(train.tensors), tensor_digest(val.tensors), source_fingerprint())


def _kill_point() -> tuple[int, int] | None:
    """(epoch, batch), 1-based, from ``RA_TEST_KILL_AT=E:B``; None when unset (tests only)."""
    v = os.environ.get(KILL_AT_ENV)
    if not v:
        return None
    try:
        epoch, batch = (int(p) for p in v.split(":"))
    except ValueError:
        raise ParamError(f"{KILL_AT_ENV} must be EPOCH:BATCH (1-based), got {v!r}") from None
    return epoch, batch


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The paper's step schedule: lr until ``lr_decay_at * epochs``, then lr * lr_decay."""
    return cfg.lr * (cfg.lr_decay if epoch >= math.ceil(cfg.lr_decay_at * cfg.epochs) and cfg.epochs > 1 else 1.0)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def seeded_subset(ds: TensorDataset, n: int | None, seed: int) -> TensorDataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return TensorDataset(*(t[idx] for t in ds.tensors))


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def validate(model: nn.Module, ds: TensorDataset, loss_cfg: LossConfig, seed: int,
             batch_size: int = 500, device: torch.device | None = None) -> dict[str, float]:
    """Validation loss (the training objective), natural accuracy and, for adversarial losses,
    PGD robust accuracy / robust inaccuracy at the training eps (attacking the prediction F(x)).

    Its draws (PGD starts, noise) come from a generator on ``device`` seeded with ``seed``: the same
    in every epoch, in a resumed run and on every device type."""
    loss_fn = get_loss(loss_cfg.name)
    model.eval()
    device = device or torch.device("cpu")
    x, y = (t.to(device) for t in ds.tensors)
    g = _generator(device, seed)
    total, n = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        loss, _ = loss_fn(model, xb, yb, loss_cfg, g)
        total += loss.item() * len(xb)
        n += len(xb)
    pred = _predict(model, x)
    out = {"val_loss": total / n, "val_nat_acc": (pred == y).float().mean().item()}
    if loss_cfg.eps > 0 and loss_cfg.name not in ("noise", "cra"):
        adv = []
        for i in range(0, len(x), batch_size):
            xb, pb = x[i:i + batch_size], pred[i:i + batch_size]
            xa = pgd(lambda xa: F.cross_entropy(model(xa), pb, reduction="none"), xb, loss_cfg.eps,
                     max(loss_cfg.pgd_steps, 1), norm=loss_cfg.norm, generator=g)
            adv.append(_predict(model, xa))
        robust = torch.cat(adv) == pred
        out["val_rob_acc"] = (robust & (pred == y)).float().mean().item()
        out["val_rob_inacc"] = (robust & (pred != y)).float().mean().item()
        out["val_rob_acc_minus_inacc"] = out["val_rob_acc"] - out["val_rob_inacc"]
    return out


def _score(metrics: dict[str, float], select: str, epoch: int) -> float:
    """Higher is better; ``select="last"`` ranks by ``epoch`` (0-based; -1: the initial model)."""
    if select == "last":
        return epoch
    if select == "val_loss":
        return -metrics["val_loss"]
    if select not in metrics:
        raise ParamError(f"select={select!r} needs an adversarial loss (metric not computed)")
    return metrics[select]


def fingerprint(*objs: Any) -> str:
    return hashlib.sha256(json.dumps([asdict(o) if hasattr(o, "__dataclass_fields__") else o
                                      for o in objs], sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _resume(state_path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, desc: str, epochs: int) -> dict | None:
    """Load the state at ``state_path`` into ``model``, ``opt`` and ``scaler`` if its key is ``key``
    and return it; remove a state with another key (other params, data or code) or one that does
    not load, and return None."""
    if not state_path.is_file():
        return None
    try:
        st = load_checkpoint(state_path)
    except CheckpointError:
        st = None
    if not isinstance(st, dict) or st.get("key") != key:
        print(f"[{desc}] removing {state_path}: made with other params, data or code, or unreadable")
        state_path.unlink()
        return None
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(st["scaler"])
    print(f"[{desc}] resuming after epoch {st['epoch']}/{epochs} from {state_path}")
    return st


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, loss_cfg: LossConfig,
                 train: TensorDataset, cfg: TrainConfig, epoch: int, device: torch.device,
                 amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, desc: str,
                 state_path: Path, max_batches: int | None = None) -> dict[str, float]:
    """Epoch ``epoch`` (0-based) of :func:`fit`; returns the mean of each training stat.

    Its randomness depends only on (seed, epoch, batch): the data order comes from a CPU generator
    seeded from (seed, epoch); the loss draws from that generator, after the permutation, on CPU,
    and from one with the same seed on another ``device``; the global RNGs are seeded per batch.
    ``max_batches`` keeps the epoch's first batches only (same order and draws as a whole epoch)."""
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, epoch)
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
        if kill_at == (epoch + 1, b + 1):
            os.kill(os.getpid(), signal.SIGKILL)
        seed_global_rngs(batch_seed(cfg.seed, epoch, b, GLOBAL), device)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        try:
            loss, stats = train_step(model, opt, loss_fn, loss_cfg, xb, yb, loss_g, amp_dtype, scaler)
        except TrainingDivergedError as e:
            raise TrainingDivergedError(
                f"[{desc}] {e} at epoch {epoch + 1}, batch {b + 1}; lower the learning rate "
                f"(lr={cfg.lr}) or check the data. Last good state: {state_path}") from None
        for k, v in {"loss": loss.item(), **stats}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
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
    with global_rngs_restored(device):
        for epoch in range(start, plan.epochs):
            last = epoch == plan.epochs - 1
            metrics = _train_epoch(model, opt, loss_fn, loss_cfg, train, plan, epoch, device, amp_dtype,
                                   scaler, desc, state_path, plan.last_batches if last else None)
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


@dataclass(frozen=True)
class Plan(TrainConfig):
    """A :class:`TrainConfig` with its budget resolved: ``epochs`` passes, the last one cut to
    ``last_batches`` batches when the budget is given in ``steps``."""
    last_batches: int | None = None


def budget(cfg: TrainConfig, n_train: int) -> Plan:
    """Resolve ``cfg``'s budget on ``n_train`` training points: ``steps`` optimiser steps (as many
    epochs as they need, the last one partial) or ``epochs`` whole passes."""
    d = asdict(cfg)
    if cfg.steps is None:
        return Plan(**d)
    per_epoch = math.ceil(n_train / cfg.batch_size)
    d["epochs"] = math.ceil(cfg.steps / per_epoch)
    rest = cfg.steps - (d["epochs"] - 1) * per_epoch
    return Plan(**d, last_batches=None if rest == per_epoch else rest)
