"""The ``train`` mapping of a model section: the budget, optimiser, selection and runtime of a fit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..device import resolve_device
from ..errors import ParamError
from ..params import Section, choice, count, non_negative, number, positive

SELECT = ["last", "val_loss", "val_nat_acc", "val_rob_acc", "val_rob_acc_minus_inacc"]
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig(Section):
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
    batch_splits: int = 1          # a batch's gradient summed over this many splits, each with its own
                                   # draws, spread over worker processes (training/data_parallel.py)

    def validate(self, prefix: str) -> None:
        count(self.epochs, f"{prefix}.epochs")
        if self.steps is not None:
            count(self.steps, f"{prefix}.steps")
        if self.max_nat_drop is not None:
            number(self.max_nat_drop, f"{prefix}.max_nat_drop", min=0, max=1)
        positive(self.lr, f"{prefix}.lr")
        number(self.lr_decay_at, f"{prefix}.lr_decay_at", min=0, max=1)
        positive(self.lr_decay, f"{prefix}.lr_decay")
        count(self.batch_size, f"{prefix}.batch_size")
        choice(self.optimizer, f"{prefix}.optimizer", ["adam", "sgd"])
        non_negative(self.momentum, f"{prefix}.momentum")
        non_negative(self.weight_decay, f"{prefix}.weight_decay")
        if self.n_train is not None:
            count(self.n_train, f"{prefix}.n_train")
        if self.n_val is not None:
            count(self.n_val, f"{prefix}.n_val")
        choice(self.select, f"{prefix}.select", SELECT)
        if self.augment is not None:
            choice(self.augment, f"{prefix}.augment", ["none", "autoaugment", "autoaugment_imagenet",
                                                      "autoaugment_svhn", "crop_flip"])
        resolve_device(self.device, f"{prefix}.device")
        count(self.seed, f"{prefix}.seed", min=0)
        choice(self.amp, f"{prefix}.amp", list(AMP))
        count(self.workers, f"{prefix}.workers", min=0)
        count(self.batch_splits, f"{prefix}.batch_splits")
        if self.batch_splits > 1 and self.amp == "fp16":
            raise ParamError(f"{prefix}.batch_splits > 1 does not work with amp: fp16 (its gradient scaler); "
                             f"use bf16 or one split")


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


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The paper's step schedule: lr until ``lr_decay_at * epochs``, then lr * lr_decay."""
    return cfg.lr * (cfg.lr_decay if epoch >= math.ceil(cfg.lr_decay_at * cfg.epochs) and cfg.epochs > 1 else 1.0)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
