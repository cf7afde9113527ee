"""CIFAR-10 / CIFAR-100 from the official "python version" archives.

Files: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}`` (torchvision's layout, so a folder filled by
``torchvision.datasets.CIFAR10(root, download=True)`` works as is).

Reading: the batches are Python pickles. torchvision reads them with plain ``pickle.load`` (which
can run arbitrary code from a tampered file) after an MD5 check of each file. We read them with
:class:`SafeBatchUnpickler`, which only allows the few globals a numpy array needs (and
``_codecs.encode`` for protocol-2 bytes), so nothing in a data file executes; the arrays are then
checked for shape and label range. Because no MD5 is required, a small hand-made batch set (tests)
reads the same way. When the files are missing and ``download`` is on, the archive is fetched with
torchvision's ``download_and_extract_archive`` (MD5-checked ``.tar.gz``), never unpickled by it.

Normalisation: ``mean``/``std`` are the usual CIFAR statistics, used by our own nets only;
RobustBench models normalise inside themselves and take [0, 1] inputs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..params import probability
from . import Prepared, split_train_val, subsample_splits

CIFAR_MEAN = {"cifar10": [0.4914, 0.4822, 0.4465], "cifar100": [0.5071, 0.4865, 0.4409]}
CIFAR_STD = {"cifar10": [0.2471, 0.2435, 0.2616], "cifar100": [0.2673, 0.2564, 0.2762]}

LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "names_key": "label_names", "labels_key": "labels",
                "num_classes": 10},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"],
                 "meta": "meta", "names_key": "fine_label_names", "labels_key": "fine_labels",
                 "num_classes": 100},
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class SafeBatchUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR batches: dicts, lists, strings, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core."):  # numpy >= 2 moved numpy.core to numpy._core
            module = "numpy._core." + module.split(".", 2)[2]
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """Load one CIFAR pickle safely; keys as ``str`` (``encoding='latin1'``, like torchvision)."""
    try:
        data = path.read_bytes()
        obj = SafeBatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _files(name: str) -> list[str]:
    lay = LAYOUT[name]
    return lay["train"] + lay["test"] + [lay["meta"]]


def _present(root: Path, name: str) -> bool:
    folder = root / LAYOUT[name]["folder"]
    return all((folder / f).is_file() for f in _files(name))


def _download(root: Path, name: str) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def locate(name: str, root: str | Path, download: bool) -> Path:
    """The folder holding the batches of ``name`` under ``root``, downloading if allowed."""
    root = Path(root)
    folder = root / LAYOUT[name]["folder"]
    if _present(root, name):
        return folder
    why = f"download disabled (data.{name}.download: false)"
    if download:
        try:
            _download(root, name)
        except Exception as e:  # offline, blocked, bad checksum, ...
            why = f"download failed: {type(e).__name__}: {e}"
        else:
            if _present(root, name):
                return folder
            why = "the downloaded archive did not contain the expected files"
    missing = [f for f in _files(name) if not (folder / f).is_file()]
    raise DataError(
        f"{name} not found in {folder} (missing: {', '.join(missing)}; {why}). Fix: put the "
        f"official python-version archive's folder '{LAYOUT[name]['folder']}' under {root} "
        f"(e.g. tar xzf {LAYOUT[name]['archive']} -C {root}), or set data.{name}.root to a "
        f"folder that has it, or go online with data.{name}.download: true.")


def _stack(folder: Path, files: list[str], labels_key: str, num_classes: int):
    xs, ys = [], []
    for f in files:
        batch = read_batch(folder / f)
        if "data" not in batch or labels_key not in batch:
            raise DataError(f"{folder / f} has no 'data'/'{labels_key}' entries "
                            f"(keys: {sorted(batch)})")
        x = np.asarray(batch["data"])
        y = np.asarray(batch[labels_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise DataError(f"{folder / f}: expected uint8 data of shape (n, 3072) and n labels, "
                            f"got {x.dtype} {x.shape} and {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{folder / f}: labels outside [0, {num_classes})")
        xs.append(x.reshape(-1, 3, 32, 32))  # rows are channel-major: R (1024), G, B
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs).copy()), torch.from_numpy(np.concatenate(ys))


def prepare_cifar(name: str, cfg: dict, seed: int) -> Prepared:
    """CIFAR-10/100 as uint8 NCHW tensors; validation split from the training data.

    cfg: ``root`` (default ``data/raw``), ``download`` (default True), ``val_fraction`` (0.1),
    optional ``n_train``, ``n_val``, ``n_test`` (seeded random subsets)."""
    if name not in LAYOUT:
        raise DataError(f"prepare_cifar: unknown dataset {name!r}; use 'cifar10' or 'cifar100'")
    lay = LAYOUT[name]
    folder = locate(name, cfg.get("root", "data/raw"), bool(cfg.get("download", True)))
    x, y = _stack(folder, lay["train"], lay["labels_key"], lay["num_classes"])
    x_te, y_te = _stack(folder, lay["test"], lay["labels_key"], lay["num_classes"])
    meta = read_batch(folder / lay["meta"])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(lay["names_key"], [])]
    if len(names) != lay["num_classes"]:
        raise DataError(f"{folder / lay['meta']}: expected {lay['num_classes']} class names in "
                        f"'{lay['names_key']}', found {len(names)}")
    val_fraction = probability(cfg.get("val_fraction", 0.1), f"{name}.val_fraction")
    x, y, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    x, y, x_va, y_va, x_te, y_te = subsample_splits(x, y, x_va, y_va, x_te, y_te, cfg, f"{name}", seed)
    return Prepared(name, x.contiguous(), y, x_va.contiguous(), y_va, x_te.contiguous(), y_te,
                    num_classes=lay["num_classes"], mean=list(CIFAR_MEAN[name]),
                    std=list(CIFAR_STD[name]), class_names=names)
