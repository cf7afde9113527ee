"""A generic image-classification tree, e.g. private rail-defect photos::

    root/train/<class>/<image>     root/test/<class>/<image>

Images are loaded with PIL, converted to RGB, resized to ``size x size`` (or ``[height, width]``)
with bilinear interpolation and stored as uint8 NCHW. Class indices follow the sorted class-folder
names of ``train/``; a test class absent from ``train/`` is an error (it could never be
predicted). The validation split comes from ``train/``. ``mean``/``std`` are computed from the
training images. Hidden files and files with other extensions are ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..params import count, probability
from . import Prepared, split_train_val, subsample_splits

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def channel_mean_std(x: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NCHW images scaled to [0, 1], in chunks (low memory)."""
    if len(x) == 0:
        return [0.5] * x.shape[1], [0.25] * x.shape[1]
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk].to(torch.float64).div_(255)
        s += xb.sum(dim=(0, 2, 3))
        s2 += xb.square().sum(dim=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _size(value) -> tuple[int, int]:
    """``size`` as (height, width): an int or a pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise DataError(f"image_folder.size must be an int or [height, width], got {value!r}")
        return count(value[0], "image_folder.size[0]"), count(value[1], "image_folder.size[1]")
    n = count(value, "image_folder.size")
    return n, n


def list_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Class name -> sorted image paths under ``root/split``."""
    base = root / split
    if not base.is_dir():
        raise DataError(f"image folder {base} not found; expected {root}/train/<class>/<image> and "
                        f"{root}/test/<class>/<image>")
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in EXTENSIONS)
        if files:
            out[d.name] = files
    if not out:
        raise DataError(f"no images found under {base}/<class>/ (extensions {', '.join(EXTENSIONS)})")
    return out


def load_images(paths: Sequence[Path], hw: tuple[int, int], desc: str) -> torch.Tensor:
    """PIL load -> RGB -> bilinear resize to (height, width) -> uint8 (N, 3, H, W)."""
    h, w = hw
    out = np.empty((len(paths), 3, h, w), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        try:
            with Image.open(p) as im:
                img = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        except OSError as e:
            raise DataError(f"cannot read image {p}: {e}") from e
        out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(out)


def prepare_image_folder(cfg: dict, seed: int) -> Prepared:
    """cfg: ``root`` (required), ``size`` (64, or [h, w]), ``val_fraction`` (0.1), optional
    ``n_train``, ``n_val``, ``n_test``, ``name`` (the dataset name stored, default image_folder)."""
    if not cfg.get("root"):
        raise DataError("data.image_folder.root is not set; point it at a folder with "
                        "train/<class>/<image> and test/<class>/<image>")
    root = Path(cfg["root"])
    hw = _size(cfg.get("size", 64))
    train, test = list_split(root, "train"), list_split(root, "test")
    classes = sorted(train)
    unknown = sorted(set(test) - set(classes))
    if unknown:
        raise DataError(f"{root}/test has classes absent from {root}/train: {unknown}")
    index = {c: i for i, c in enumerate(classes)}

    def flat(tree: dict[str, list[Path]]) -> tuple[list[Path], torch.Tensor]:
        paths = [p for c in sorted(tree) for p in tree[c]]
        labels = torch.tensor([index[c] for c in sorted(tree) for _ in tree[c]], dtype=torch.long)
        return paths, labels

    p_tr, y = flat(train)
    p_te, y_te = flat(test)
    x = load_images(p_tr, hw, "train")
    x_te = load_images(p_te, hw, "test")
    val_fraction = probability(cfg.get("val_fraction", 0.1), "image_folder.val_fraction")
    x, y, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    mean, std = channel_mean_std(x)  # from the training part only
    x, y, x_va, y_va, x_te, y_te = subsample_splits(x, y, x_va, y_va, x_te, y_te, cfg, "image_folder", seed)
    return Prepared(str(cfg.get("name", "image_folder")), x, y, x_va, y_va, x_te, y_te,
                    num_classes=len(classes), mean=mean, std=std, class_names=classes)
