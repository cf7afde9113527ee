"""The (fine-)tuning loop: the paper's schedule, model selection on the validation split, and exact
resume after a kill.

Guarantees
* Reproducible on CPU: shuffling and attack/noise randomness come from generators seeded by
  (seed, epoch), so a run resumed from its last finished epoch ends with the same weights as an
  uninterrupted one.
* Never selects on the test set: ``select`` ranks epochs on the validation split only.
* A non-finite loss stops training with :class:`TrainingDivergedError`; the last good epoch's
  state stays on disk for inspection, and no final model is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from .attacks.pgd import pgd
from .errors import ParamError, TrainingDivergedError
from .io import load_checkpoint, save_checkpoint
from .losses import LossConfig, get_loss
from .params import choice, count, non_negative, number, positive

SELECT = ["last", "val_loss", "val_nat_acc", "val_rob_acc", "val_rob_acc_minus_inacc"]


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


def fit(model: nn.Module, loss_cfg: LossConfig, train: TensorDataset, val: TensorDataset,
        cfg: TrainConfig, state_path: str | Path, log: Callable[[int, dict], None] | None = None,
        desc: str = "train") -> tuple[nn.Module, list[dict]]:
    """Train ``model`` with ``loss_cfg`` and return (the selected model, per-epoch history).

    ``state_path`` holds the resumable state (weights, optimiser, best-so-far, history), written
    atomically after every epoch; a matching state (same configs and initial weights) is resumed."""
    loss_fn = get_loss(loss_cfg.name)
    train = seeded_subset(train, cfg.n_train, cfg.seed)
    val = seeded_subset(val, cfg.n_val, cfg.seed + 1)
    init_sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = fingerprint(loss_cfg, cfg, hashlib.sha256(b"".join(
        v.detach().cpu().numpy().tobytes() for v in init_sd.values())).hexdigest(), len(train), len(val))
    opt = make_optimizer(model, cfg)
    start, history, best, best_score = 0, [], copy.deepcopy(init_sd), -math.inf
    state_path = Path(state_path)
    if state_path.is_file():
        st = load_checkpoint(state_path)
        if st.get("key") == key:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            start, history, best, best_score = st["epoch"], st["history"], st["best"], st["best_score"]
            print(f"[{desc}] resuming after epoch {start}/{cfg.epochs} from {state_path}")
        else:
            print(f"[{desc}] ignoring {state_path}: made with other params")
    device = resolve_device(cfg.device)
    model.to(device)
    x, y = train.tensors
    for epoch in range(start, cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(y), generator=g)
        model.train()
        sums: dict[str, float] = {}
        nb = math.ceil(len(y) / cfg.batch_size)
        bar = tqdm(range(nb), desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2)
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb = _augment(x[idx], cfg.augment, g).to(device, non_blocking=True)
            loss, stats = loss_fn(model, xb, y[idx].to(device), loss_cfg, g if device.type == "cpu" else None)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"[{desc}] non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {b + 1}; "
                    f"lower the learning rate (lr={cfg.lr}) or check the data. Last good state: {state_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
        save_checkpoint({"key": key, "epoch": epoch + 1, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "history": history, "best": best,
                         "best_score": best_score}, state_path)
    model.load_state_dict(best)
    model.eval()
    return model.cpu(), history
