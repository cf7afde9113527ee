"""MTSD (Mapillary Traffic Sign Dataset) traffic-sign crops, as in the paper's Appendix A.1.

Input: the official layout under ``cfg['root']``::

    annotations/<key>.json   {"width", "height", "objects": [{"key", "label",
                              "bbox": {"xmin", "ymin", "xmax", "ymax"},
                              "properties": {"occluded", "out-of-frame", "exterior", "ambiguous",
                                             "included", "dummy", ...}}, ...]}
    images/<key>.jpg
    splits/train.txt, splits/val.txt   one image key per line

The official *val* split is our test set (MTSD's test split has no public annotations); our
validation split is a seeded part of the training crops (:func:`split_train_val`).

Per object: drop it if any of the properties occluded, out-of-frame, exterior, ambiguous,
included, dummy is true, or its label is ``other-sign``; crop with slack (eq. 16): each side of the
box is moved outwards by ``lambda * alpha * size`` (size = box width for left/right, box height
for top/bottom), alpha ~ U[0, 1]; clip to the image; resize to ``size x size`` (PIL bilinear).

Choices, documented:

* ``slack: per_side`` (default) draws one alpha per side, as eq. (16) reads. ``slack: split``
  is the authors' published code: one alpha per axis splits a total slack of ``lambda * size``
  between the two sides (left gets alpha, right 1 - alpha).
* The alphas of an object come from ``numpy.random.default_rng([seed, h])`` with ``h`` a stable
  (SHA-256) hash of the object's key, so they do not depend on file-system order, on which other
  objects were filtered, or on the subset of images processed.
* Box edges are rounded outwards (floor / ceil), so the crop always contains the original box.
* Classes: sorted label names of the kept training crops, optionally only those with at least
  ``min_per_class`` training crops; test crops of other labels are dropped (and counted).
* ``mean``/``std`` are computed from the training crops.

Nothing is cached on disk; the result is the returned :class:`Prepared`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..params import choice, count, non_negative, probability
from . import Prepared, split_train_val, subsample_splits
from .image_folder import channel_mean_std

log = logging.getLogger(__name__)

DROP_PROPERTIES = ("occluded", "out-of-frame", "exterior", "ambiguous", "included", "dummy")
DROP_LABELS = ("other-sign",)
SLACK_MODES = ("per_side", "split")


@dataclass(frozen=True)
class Crop:
    """One kept object: where it is and the crop box (pixels, right/bottom exclusive)."""

    box: tuple[int, int, int, int]   # left, top, right, bottom after slack and clipping
    image_key: str
    object_key: str
    label: str


def keep_object(obj: dict) -> bool:
    """The paper's filter: no problematic property set, and not the catch-all ``other-sign``."""
    props = obj.get("properties") or {}
    if any(bool(props.get(p, False)) for p in DROP_PROPERTIES):
        return False
    return obj.get("label") not in DROP_LABELS


def object_alphas(object_key: str, seed: int, n: int = 4) -> np.ndarray:
    """``n`` draws of U[0, 1] for one object, reproducible from (seed, object key) alone."""
    h = int.from_bytes(hashlib.sha256(object_key.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, h]).random(n)


def slack_box(bbox: dict, width: int, height: int, alphas: Sequence[float], lam: float = 1.0,
              mode: str = "per_side") -> tuple[int, int, int, int]:
    """Eq. (16): widen a box by ``lam * alpha * size`` per side, round outwards, clip to the image.

    ``alphas``: (left, right, top, bottom) for ``per_side``; (x, y) (at least) for ``split``.
    Returns (left, top, right, bottom) integer pixel bounds with right/bottom exclusive."""
    xmin, ymin = float(bbox["xmin"]), float(bbox["ymin"])
    xmax, ymax = float(bbox["xmax"]), float(bbox["ymax"])
    w, h = xmax - xmin, ymax - ymin
    if mode == "per_side":
        a_l, a_r, a_t, a_b = (float(a) for a in alphas[:4])
        left, right = xmin - lam * a_l * w, xmax + lam * a_r * w
        top, bottom = ymin - lam * a_t * h, ymax + lam * a_b * h
    elif mode == "split":
        a_x, a_y = float(alphas[0]), float(alphas[1])
        left, right = xmin - lam * a_x * w, xmax + lam * (1 - a_x) * w
        top, bottom = ymin - lam * a_y * h, ymax + lam * (1 - a_y) * h
    else:
        raise DataError(f"unknown slack mode {mode!r}; use one of {SLACK_MODES}")
    l_, t_ = max(0, math.floor(left)), max(0, math.floor(top))
    r_, b_ = min(int(width), math.ceil(right)), min(int(height), math.ceil(bottom))
    return l_, t_, r_, b_


def _read_keys(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"MTSD split file {path} not found (expected splits/train.txt and "
                        f"splits/val.txt under the MTSD root)")
    keys = [line.strip() for line in path.read_text().splitlines()]
    return [k for k in keys if k]


def _annotation(root: Path, key: str) -> dict:
    path = root / "annotations" / f"{key}.json"
    try:
        anno = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"MTSD annotation {path} not found (listed in a split file)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read MTSD annotation {path}: {e}") from e
    if not isinstance(anno, dict) or not isinstance(anno.get("objects"), list):
        raise DataError(f"MTSD annotation {path} has no 'objects' list")
    return anno


def plan_crops(root: Path, keys: Iterable[str], seed: int, lam: float, mode: str,
               stats: Counter) -> list[Crop]:
    """Read annotations, filter objects and compute every crop box (no image is opened)."""
    crops: list[Crop] = []
    for key in keys:
        anno = _annotation(root, key)
        try:
            width, height = int(anno["width"]), int(anno["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"MTSD annotation for {key} lacks integer 'width'/'height'") from None
        for i, obj in enumerate(anno["objects"]):
            stats["objects"] += 1
            if not keep_object(obj):
                stats["filtered"] += 1
                continue
            okey = str(obj.get("key") or f"{key}:{i}")
            try:
                box = slack_box(obj["bbox"], width, height, object_alphas(okey, seed), lam, mode)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"MTSD annotation for {key}: object {okey} has no valid bbox") from None
            if box[2] <= box[0] or box[3] <= box[1]:
                stats["degenerate"] += 1
                continue
            crops.append(Crop(box, key, okey, str(obj["label"])))
    return crops


def render_crops(root: Path, crops: list[Crop], size: int, desc: str) -> torch.Tensor:
    """Open each image once, cut its crops, resize (bilinear) and stack as uint8 NCHW."""
    out = np.empty((len(crops), 3, size, size), dtype=np.uint8)
    by_image: dict[str, list[int]] = {}
    for j, c in enumerate(crops):
        by_image.setdefault(c.image_key, []).append(j)
    for key in tqdm(by_image, desc=f"MTSD {desc}", unit="img", leave=False):
        path = root / "images" / f"{key}.jpg"
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"MTSD image {path} not found") from None
        except OSError as e:
            raise DataError(f"cannot read MTSD image {path}: {e}") from e
        for j in by_image[key]:
            patch = img.crop(crops[j].box).resize((size, size), Image.Resampling.BILINEAR)
            out[j] = np.asarray(patch, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(out)


def check_root(root: str | Path | None) -> Path:
    if not root:
        raise DataError("data.mtsd.root is not set; point it at the MTSD folder with annotations/, "
                        "images/ and splits/ (https://www.mapillary.com/dataset/trafficsign)")
    root = Path(root)
    missing = [d for d in ("annotations", "images", "splits") if not (root / d).is_dir()]
    if missing:
        raise DataError(f"MTSD root {root} lacks {', '.join(m + '/' for m in missing)}; expected "
                        f"the official layout (annotations/<key>.json, images/<key>.jpg, "
                        f"splits/train.txt, splits/val.txt)")
    return root


def prepare_mtsd(cfg: dict, seed: int) -> Prepared:
    """MTSD crops as uint8 NCHW tensors (see the module docstring for every choice).

    cfg: ``root`` (required), ``size`` (64), ``lambda`` (1.0), ``slack`` (``per_side``|``split``),
    ``min_per_class`` (0), ``val_fraction`` (0.1), optional ``n_train``, ``n_val``, ``n_test``."""
    root = check_root(cfg.get("root"))
    size = count(cfg.get("size", 64), "mtsd.size")
    lam = non_negative(cfg.get("lambda", 1.0), "mtsd.lambda")
    mode = choice(cfg.get("slack", "per_side"), "mtsd.slack", SLACK_MODES)
    min_per_class = count(cfg.get("min_per_class", 0), "mtsd.min_per_class", min=0)
    val_fraction = probability(cfg.get("val_fraction", 0.1), "mtsd.val_fraction")

    stats: Counter = Counter()
    train = plan_crops(root, _read_keys(root / "splits" / "train.txt"), seed, lam, mode, stats)
    test = plan_crops(root, _read_keys(root / "splits" / "val.txt"), seed, lam, mode, stats)
    counts = Counter(c.label for c in train)
    classes = sorted(lbl for lbl, n in counts.items() if n >= max(min_per_class, 1))
    if not classes:
        raise DataError(f"MTSD in {root}: no training crops left after filtering "
                        f"({stats['objects']} objects, {stats['filtered']} filtered)")
    index = {c: i for i, c in enumerate(classes)}
    n_tr, n_te = len(train), len(test)
    train = [c for c in train if c.label in index]
    test = [c for c in test if c.label in index]
    log.info("MTSD: %d objects, %d filtered, %d degenerate; %d/%d train and %d/%d test crops kept "
             "in %d classes", stats["objects"], stats["filtered"], stats["degenerate"], len(train),
             n_tr, len(test), n_te, len(classes))
    if not test:
        raise DataError(f"MTSD in {root}: no test (official val) crops with a training label")

    x = render_crops(root, train, size, "train")
    y = torch.tensor([index[c.label] for c in train], dtype=torch.long)
    x_te = render_crops(root, test, size, "test")
    y_te = torch.tensor([index[c.label] for c in test], dtype=torch.long)

    x, y, x_va, y_va = split_train_val(x, y, val_fraction, seed)
    mean, std = channel_mean_std(x)  # from the training part only
    x, y, x_va, y_va, x_te, y_te = subsample_splits(x, y, x_va, y_va, x_te, y_te, cfg, "mtsd", seed)
    return Prepared("mtsd", x, y, x_va, y_va, x_te, y_te, num_classes=len(classes),
                    mean=mean, std=std, class_names=classes)
