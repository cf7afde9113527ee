"""Datasets as prepared tensors in [0, 1].

``prepare(name, cfg, seed)`` returns a :class:`Prepared` (train / val / test tensors and metadata);
the ``prepare`` stage saves it with :func:`save_prepared` and every later stage reads it back with
:func:`load_prepared`. The validation split always comes from the training data, never the test
set. Images are stored as uint8 to keep the DVC cache small and converted to float on load.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..errors import DataError, ParamError
from ..io import load_checkpoint, save_checkpoint
from ..params import Section, choice, count


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: ``loader(*args, cfg, seed) -> Prepared`` in the submodule ``module`` (imported on
    use, so a dataset's own dependencies load only when it is chosen); ``cfg`` is its params section
    ``data.<name>``."""

    module: str
    loader: str
    description: str
    keys: tuple[str, ...]            # the keys its params section may hold (others are an error)
    args: tuple = ()


#: the keys of :func:`subsample_splits`, which every loader of a train/val/test source accepts
SPLIT_KEYS = ("n_train", "n_val", "n_test")

#: Adding a dataset: a module here with its loader, one entry below, a ``data.<name>`` section in a
#: params file and a test (see tests/test_data_paper.py).
DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("synthetic", "prepare_synthetic", "the paper's Figure 1: 3 Gaussians in 2-D",
                             ("n", "n_test", "val_fraction", "centers", "std", "weights")),
    "fashion_mnist": DatasetSpec("fashion_mnist", "prepare_fashion_mnist", "Fashion-MNIST (the default)",
                                 ("root", "download_root", "val_fraction", *SPLIT_KEYS)),
    "cifar10": DatasetSpec("cifar", "prepare_cifar", "CIFAR-10", ("root", "download", "val_fraction", *SPLIT_KEYS),
                           ("cifar10",)),
    "cifar100": DatasetSpec("cifar", "prepare_cifar", "CIFAR-100",
                            ("root", "download", "val_fraction", *SPLIT_KEYS), ("cifar100",)),
    "mtsd": DatasetSpec("mtsd", "prepare_mtsd", "Mapillary traffic-sign crops (see data/mtsd.py)",
                        ("root", "size", "lambda", "slack", "min_per_class", "val_fraction", *SPLIT_KEYS)),
    "image_folder": DatasetSpec("image_folder", "prepare_image_folder",
                                "any root/{train,test}/<class>/<image> tree",
                                ("root", "name", "size", "val_fraction", *SPLIT_KEYS)),
}


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
    for (a, b), key, s in zip(((x, y), (x_va, y_va), (x_te, y_te)), SPLIT_KEYS, (seed, seed + 1, seed + 2)):
        n = cfg.get(key)
        out += subsample(a, b, None if n is None else count(n, f"{prefix}.{key}"), s)
    return tuple(out)


def prepare(name: str, cfg: dict[str, Any], seed: int) -> Prepared:
    """Build the named dataset (a key of :data:`DATASETS`) from its source. ``cfg`` is the dataset's
    params section."""
    if name not in DATASETS:
        raise ParamError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    spec = DATASETS[name]
    unknown = sorted(set(cfg) - set(spec.keys))
    if unknown:
        raise ParamError(f"{name}: unknown keys {unknown}; known: {sorted(spec.keys)}")
    loader = getattr(importlib.import_module(f"{__name__}.{spec.module}"), spec.loader)
    return loader(*spec.args, cfg, seed)


@dataclass(frozen=True)
class DataConfig(Section):
    """The ``data`` section: which dataset, its split seed, and one section per dataset (only the
    chosen one is read)."""

    dataset: str
    seed: int
    synthetic: dict | None = None
    fashion_mnist: dict | None = None
    cifar10: dict | None = None
    cifar100: dict | None = None
    mtsd: dict | None = None
    image_folder: dict | None = None

    def validate(self, prefix: str) -> None:
        choice(self.dataset, f"{prefix}.dataset", DATASETS)
        count(self.seed, f"{prefix}.seed", min=0)

    def prepare(self) -> "Prepared":
        return prepare(self.dataset, getattr(self, self.dataset) or {}, self.seed)


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
