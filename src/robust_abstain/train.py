"""The (fine-)tuning loop: the paper's schedule, model selection on the validation split, and exact
resume after a kill.

Guarantees
* Reproducible on CPU: shuffling and attack/noise randomness come from generators seeded by
  (seed, epoch), so a run resumed from its last finished epoch ends with the same weights as an
  uninterrupted one.
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
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .attacks.pgd import pgd
from .errors import ParamError, TrainingDivergedError
from .io import load_checkpoint, save_checkpoint
from .losses import LossConfig, LossFn, Stats, get_loss
from .params import choice, count, non_negative, number, positive

SELECT = ["last", "val_loss", "val_nat_acc", "val_rob_acc", "val_rob_acc_minus_inacc"]
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
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


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of batch ``batch``'s augmentation in epoch ``epoch`` (independent streams via
    numpy's SeedSequence, as elsewhere in the project)."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1, np.uint64)[0])


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


def _state_key_cfg(cfg: TrainConfig) -> dict:
    """The part of ``cfg`` that identifies a resumable state: ``workers`` does not change the
    result, and ``amp`` at its default is left out so states written before it existed resume."""
    d = asdict(cfg)
    del d["workers"]
    if d["amp"] == "none":
        del d["amp"]
    return d


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
    PGD robust accuracy / robust inaccuracy at the training eps (attacking the prediction F(x))."""
    loss_fn = get_loss(loss_cfg.name)
    model.eval()
    device = device or torch.device("cpu")
    x, y = (t.to(device) for t in ds.tensors)
    g = torch.Generator().manual_seed(seed) if device.type == "cpu" else None
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


def _score(metrics: dict[str, float], select: str) -> float:
    """Higher is better."""
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


def fit(model: nn.Module, loss_cfg: LossConfig, train: TensorDataset, val: TensorDataset,
        cfg: TrainConfig, state_path: str | Path, log: Callable[[int, dict], None] | None = None,
        desc: str = "train") -> tuple[nn.Module, list[dict]]:
    """Train ``model`` with ``loss_cfg`` and return (the selected model, per-epoch history).

    ``state_path`` holds the resumable state (weights, optimiser, fp16 gradient scaler,
    best-so-far, history), written atomically after every epoch; a matching state (same configs
    and initial weights) is resumed, and then ends with the same weights as an uninterrupted run.

    ``cfg.amp``: ``"bf16"`` / ``"fp16"`` run only the training loss (its forward passes and its
    inner attack, e.g. TRADES's PGD) under :func:`torch.autocast`; the backward pass, the
    optimiser step, the fp32 weights and :func:`validate` are unchanged. ``"fp16"`` adds a
    :class:`torch.amp.GradScaler`: steps with overflowing gradients are skipped and the scale
    lowered, as usual; a non-finite *loss* still raises :class:`TrainingDivergedError`. Evaluation
    attacks and certification never use this: they always run in fp32, since low-precision
    gradients can weaken an attack and so overstate robust accuracy.

    ``cfg.workers``: processes that prepare (gather and augment) the batches ahead of the model
    step; the weights do not depend on it (see :class:`EpochBatches`)."""
    loss_fn = get_loss(loss_cfg.name)
    train = seeded_subset(train, cfg.n_train, cfg.seed)
    val = seeded_subset(val, cfg.n_val, cfg.seed + 1)
    init_sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = fingerprint(loss_cfg, _state_key_cfg(cfg), hashlib.sha256(b"".join(
        v.detach().cpu().numpy().tobytes() for v in init_sd.values())).hexdigest(), len(train), len(val))
    opt = make_optimizer(model, cfg)
    device = resolve_device(cfg.device)
    amp_dtype = AMP[cfg.amp]
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    start, history, best, best_score = 0, [], copy.deepcopy(init_sd), -math.inf
    state_path = Path(state_path)
    if state_path.is_file():
        st = load_checkpoint(state_path)
        if st.get("key") == key:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            if scaler is not None:
                scaler.load_state_dict(st["scaler"])
            start, history, best, best_score = st["epoch"], st["history"], st["best"], st["best_score"]
            print(f"[{desc}] resuming after epoch {start}/{cfg.epochs} from {state_path}")
        else:
            print(f"[{desc}] ignoring {state_path}: made with other params")
    model.to(device)
    x, y = train.tensors
    for epoch in range(start, cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(y), generator=g)
        model.train()
        sums: dict[str, float] = {}
        batches = EpochBatches(x, y, perm, cfg.batch_size, cfg.augment, cfg.seed, epoch)
        nb = len(batches)
        bar = tqdm(enumerate(iterate_batches(batches, cfg.workers, device)), total=nb,
                   desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2)
        for b, (xb, yb) in bar:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            try:
                loss, stats = train_step(model, opt, loss_fn, loss_cfg, xb, yb,
                                         g if device.type == "cpu" else None, amp_dtype, scaler)
            except TrainingDivergedError as e:
                raise TrainingDivergedError(
                    f"[{desc}] {e} at epoch {epoch + 1}, batch {b + 1}; lower the learning rate "
                    f"(lr={cfg.lr}) or check the data. Last good state: {state_path}") from None
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        metrics = {f"train_{k}": v / nb for k, v in sums.items()}
        metrics.update(validate(model, val, loss_cfg, seed=cfg.seed + 7, device=device))
        metrics["lr"] = lr_at(cfg, epoch)
        score = _score(metrics, cfg.select) if cfg.select != "last" else epoch
        if score >= best_score:
            best_score, best = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics["selected"] = float(score == best_score)
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
    model.load_state_dict(best)
    model.eval()
    return model.cpu(), history
