"""Fashion-MNIST from its idx files.

Where the files are looked for, in order: ``cfg['root']`` (params), Debian's dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist), then torchvision's download into ``cfg['download_root']``.
If none works the error names all three."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..params import probability
from . import Prepared, split_train_val, subsample_splits

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz): magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / f"{stem}.gz", root / stem, root / "FashionMNIST" / "raw" / stem,
                 root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def locate(root: str | None, download_root: str | None) -> Path:
    tried = []
    for cand in ([Path(root)] if root else []) + [DEBIAN_ROOT]:
        tried.append(str(cand))
        if all(_find(cand, s) for s in FILES.values()):
            return cand
    if download_root:
        tried.append(f"torchvision download into {download_root}")
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(download_root, train=True, download=True)
            FashionMNIST(download_root, train=False, download=True)
            return Path(download_root)
        except Exception as e:  # offline, blocked, ...
            tried[-1] += f" (failed: {type(e).__name__})"
    raise DataError("Fashion-MNIST idx files not found. Tried: " + "; ".join(tried) +
                    ". Set data.fashion_mnist.root to a folder with the four idx(.gz) files, "
                    "or `apt-get install dataset-fashion-mnist`, or go online for the download.")


def prepare_fashion_mnist(cfg: dict, seed: int) -> Prepared:
    root = locate(cfg.get("root"), cfg.get("download_root"))
    arr = {k: read_idx(_find(root, s)) for k, s in FILES.items()}
    x = torch.from_numpy(arr["train_images"].copy()).unsqueeze(1)
    y = torch.from_numpy(arr["train_labels"].astype(np.int64))
    x_te = torch.from_numpy(arr["test_images"].copy()).unsqueeze(1)
    y_te = torch.from_numpy(arr["test_labels"].astype(np.int64))
    if len(x) != len(y) or len(x_te) != len(y_te):
        raise DataError(f"Fashion-MNIST in {root}: image and label counts differ")
    val_fraction = probability(cfg.get("val_fraction", 0.1), "fashion_mnist.val_fraction")
    x, y, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    x, y, x_va, y_va, x_te, y_te = subsample_splits(x, y, x_va, y_va, x_te, y_te, cfg, "fashion_mnist", seed)
    return Prepared("fashion_mnist", x, y, x_va, y_va, x_te, y_te, num_classes=10,
                    mean=[0.2860], std=[0.3530], class_names=CLASSES)
