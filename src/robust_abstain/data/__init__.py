"""Datasets as prepared tensors in [0, 1].

``prepare(name, cfg, seed)`` returns a :class:`Prepared` (train / val / test tensors and metadata);
the ``prepare`` stage saves it with :func:`save_prepared` and every later stage reads it back with
:func:`load_prepared`. The validation split always comes from the training data, never the test
set. Images are stored as uint8 to keep the DVC cache small and converted to float on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..errors import DataError, ParamError
from ..io import load_checkpoint, save_checkpoint
from ..params import count


class DatasetName(str, Enum):
    SYNTHETIC = "synthetic"          # the paper's Figure 1: 3 Gaussians in 2-D
    FASHION_MNIST = "fashion_mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    MTSD = "mtsd"                    # Mapillary traffic-sign crops (see data/mtsd.py)
    IMAGE_FOLDER = "image_folder"    # any root/{train,test}/<class>/<image> tree


@dataclass
class Prepared:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: list[float]
    std: list[float]
    class_names: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @staticmethod
    def _float(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def split(self, which: str) -> TensorDataset:
        """``train``, ``val`` or ``test`` as a TensorDataset of (float x in [0, 1], long y)."""
        x, y = getattr(self, f"x_{which}"), getattr(self, f"y_{which}")
        return TensorDataset(self._float(x), y.long())


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int):
    """Seeded random split of the *training* data into train and validation parts."""
    if not 0 <= val_fraction < 1:
        raise ParamError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(round(val_fraction * len(y)))
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]


def subsample(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    """A seeded random subset of n points (all points when n is None or >= len)."""
    if n is None or n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[idx], y[idx]


def subsample_splits(x, y, x_va, y_va, x_te, y_te, cfg: dict[str, Any], prefix: str, seed: int):
    """Seeded random subsets of train / val / test as ``cfg``'s ``n_train`` / ``n_val`` / ``n_test``
    ask (absent or None: the whole split). Returns the six tensors in the same order."""
    out: list[torch.Tensor] = []
    for (a, b), key, s in (((x, y), "n_train", seed), ((x_va, y_va), "n_val", seed + 1),
                           ((x_te, y_te), "n_test", seed + 2)):
        n = cfg.get(key)
        out += subsample(a, b, None if n is None else count(n, f"{prefix}.{key}"), s)
    return tuple(out)


def prepare(name: str, cfg: dict[str, Any], seed: int) -> Prepared:
    """Build the named dataset from its source. ``cfg`` is the dataset's params section."""
    try:
        dn = DatasetName(name)
    except ValueError:
        raise ParamError(f"unknown dataset {name!r}; choose one of {[d.value for d in DatasetName]}") from None
    if dn is DatasetName.SYNTHETIC:
        from .synthetic import prepare_synthetic
        return prepare_synthetic(cfg, seed)
    if dn is DatasetName.FASHION_MNIST:
        from .fashion_mnist import prepare_fashion_mnist
        return prepare_fashion_mnist(cfg, seed)
    if dn in (DatasetName.CIFAR10, DatasetName.CIFAR100):
        from .cifar import prepare_cifar
        return prepare_cifar(dn.value, cfg, seed)
    if dn is DatasetName.MTSD:
        from .mtsd import prepare_mtsd
        return prepare_mtsd(cfg, seed)
    if dn is DatasetName.IMAGE_FOLDER:
        from .image_folder import prepare_image_folder
        return prepare_image_folder(cfg, seed)
    raise AssertionError(dn)


def save_prepared(p: Prepared, path: str | Path) -> None:
    save_checkpoint({k: getattr(p, k) for k in Prepared.__dataclass_fields__}, path)


def load_prepared(path: str | Path) -> Prepared:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared dataset {path} not found; run `dvc repro prepare` first")
    state = load_checkpoint(path)
    try:
        return Prepared(**state)
    except TypeError as e:
        raise DataError(f"{path} is not a prepared dataset ({e})") from e
