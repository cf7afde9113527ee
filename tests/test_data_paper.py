"""Offline tests of the paper's datasets (CIFAR, MTSD, image folders) and the augmentation, all on
small fixtures written by the tests."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_abstain.data import prepare
from robust_abstain.data import cifar as cifar_mod
from robust_abstain.data.augment import augment_batch, crop_flip
from robust_abstain.data.cifar import prepare_cifar, read_batch
from robust_abstain.data.image_folder import prepare_image_folder
from robust_abstain.data.mtsd import object_alphas, prepare_mtsd, slack_box
from robust_abstain.errors import DataError, ParamError


# --------------------------------------------------------------------------------------- CIFAR
def _dump(obj, path: Path, bytes_keys: bool = False) -> None:
    if bytes_keys:  # like the original Python-2 files read back as bytes
        obj = {k.encode(): v for k, v in obj.items()}
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_fake_cifar10(root: Path, per_batch: int = 6, n_test: int = 8, bytes_keys: bool = False) -> None:
    """The official cifar-10-batches-py layout; image i is filled with the value i."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    i = 0
    for b in range(1, 6):
        data = np.stack([np.full(3072, i + k, np.uint8) for k in range(per_batch)])
        labels = [(i + k) % 10 for k in range(per_batch)]
        _dump({"batch_label": f"training batch {b}", "labels": labels, "data": data,
               "filenames": [f"{i + k}.png" for k in range(per_batch)]}, d / f"data_batch_{b}", bytes_keys)
        i += per_batch
    data = np.stack([np.full(3072, 200 + k, np.uint8) for k in range(n_test)])
    _dump({"batch_label": "testing batch 1", "labels": [k % 10 for k in range(n_test)], "data": data,
           "filenames": []}, d / "test_batch", bytes_keys)
    _dump({"label_names": [f"class{c}" for c in range(10)], "num_cases_per_batch": per_batch},
          d / "batches.meta", bytes_keys)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_fake_layout(tmp_path, bytes_keys):
    write_fake_cifar10(tmp_path, bytes_keys=bytes_keys)
    p = prepare("cifar10", {"root": str(tmp_path), "download": False, "val_fraction": 0.1}, seed=0)
    assert p.name == "cifar10" and p.num_classes == 10
    assert p.x_train.dtype == torch.uint8 and p.x_train.shape[1:] == (3, 32, 32)
    assert len(p.y_train) == 27 and len(p.y_val) == 3 and len(p.y_test) == 8
    values = torch.cat([p.x_train, p.x_val])[:, 0, 0, 0].long()
    labels = torch.cat([p.y_train, p.y_val])
    assert sorted(values.tolist()) == list(range(30))          # nothing lost, nothing duplicated
    assert torch.equal(labels, values % 10)                    # labels stay with their images
    assert torch.equal(p.y_test, torch.arange(8) % 10)
    assert p.class_names == [f"class{c}" for c in range(10)]
    assert len(p.mean) == 3 and len(p.std) == 3
    # same seed, same split; subsampling
    q = prepare_cifar("cifar10", {"root": str(tmp_path), "download": False, "n_train": 5,
                                  "n_test": 4}, seed=0)
    assert len(q.y_train) == 5 and len(q.y_test) == 4
    r = prepare_cifar("cifar10", {"root": str(tmp_path), "download": False}, seed=0)
    assert torch.equal(r.x_val, p.x_val)


def test_cifar100_fake_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 5)):
        _dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
               "fine_labels": list(range(n)), "coarse_labels": [0] * n, "filenames": []}, d / split)
    _dump({"fine_label_names": [f"f{c:03d}" for c in range(100)], "coarse_label_names": []}, d / "meta")
    p = prepare("cifar100", {"root": str(tmp_path), "download": False, "val_fraction": 0.25}, seed=1)
    assert p.num_classes == 100 and len(p.y_train) == 15 and len(p.y_val) == 5 and len(p.y_test) == 5
    assert p.class_names[7] == "f007"


def test_cifar_missing_names_root_and_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cifar-10-batches-py") as e:
        prepare_cifar("cifar10", {"root": str(tmp_path / "nowhere"), "download": False}, seed=0)
    assert "data.cifar10.root" in str(e.value) and "download" in str(e.value)

    def offline(root, name):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar_mod, "_download", offline)
    with pytest.raises(DataError, match="download failed: OSError"):
        prepare_cifar("cifar10", {"root": str(tmp_path)}, seed=0)


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official files: byte strings as py2 ``str``
    (BINSTRING opcodes) and numpy's old module path ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return None
        return super().save_global(obj, name)

    dispatch[bytes] = save_bytes
    dispatch[type(len)] = save_global


def test_cifar_reads_python2_pickles(tmp_path):
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"data": data, b"labels": [3, 4], b"batch_label": b"x"})
    (tmp_path / "b").write_bytes(buf.getvalue())
    batch = read_batch(tmp_path / "b")
    assert batch["labels"] == [3, 4] and np.array_equal(batch["data"], data)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_batch_reader_refuses_code(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        read_batch(path)


# ------------------------------------------------------------------------------------ augment
def test_augment_identity_and_autoaugment():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, None, g)
    assert out.dtype == torch.float32 and torch.allclose(out, x.float() / 255)
    state = torch.get_rng_state()
    a = augment_batch(x, "autoaugment", torch.Generator().manual_seed(1))
    b = augment_batch(x.float() / 255, "autoaugment", torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)            # global RNG untouched
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)                                     # uint8 or float input, same seed
    many = [augment_batch(x, "autoaugment", torch.Generator().manual_seed(s)) for s in range(4)]
    assert any(not torch.equal(many[0], m) for m in many[1:])
    with pytest.raises(ParamError):
        augment_batch(x, "bogus", g)


def test_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out = crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    assert out.shape == x.shape
    for i in range(2):  # every non-zero value comes from the same image
        vals = out[i][out[i] > 0]
        assert ((vals >= x[i].min()) & (vals <= x[i].max())).all()
    same = crop_flip(x, torch.Generator().manual_seed(5), padding=0)  # no padding: flip or not
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(2))
    flips = [crop_flip(x[:1], torch.Generator().manual_seed(s), padding=0) for s in range(8)]
    assert any(torch.equal(f[0], x[0].flip(-1)) for f in flips) and any(torch.equal(f[0], x[0]) for f in flips)
    full = augment_batch(torch.ones(4, 3, 8, 8), None, torch.Generator().manual_seed(0),
                         random_crop_flip=True)
    assert full.shape == (4, 3, 8, 8) and set(full.unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------------------- MTSD
def _obj(key, label, box, **props):
    base = {p: False for p in ("occluded", "out-of-frame", "exterior", "ambiguous", "included", "dummy")}
    base.update(props)
    xmin, ymin, xmax, ymax = box
    return {"key": key, "label": label, "bbox": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            "properties": base}


def write_fake_mtsd(root: Path) -> None:
    """4 training and 2 validation images, 120 x 90, with kept and filtered signs."""
    for d in ("annotations", "images", "splits"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    objects = {
        "tr0": [_obj("o0", "stop", (10, 10, 40, 40)), _obj("o1", "yield", (60, 20, 90, 60)),
                _obj("o2", "stop", (5, 5, 20, 20), occluded=True)],
        "tr1": [_obj("o3", "yield", (0, 0, 30, 25)), _obj("o4", "other-sign", (40, 40, 70, 70))],
        "tr2": [_obj("o5", "stop", (95, 60, 120, 90)), _obj("o6", "speed", (30, 30, 50, 50), dummy=True)],
        "tr3": [_obj("o7", "yield", (20, 30, 50, 70), ambiguous=True),
                _obj("o8", "stop", (50, 10, 80, 45), **{"out-of-frame": True}),
                _obj("o9", "yield", (70, 40, 100, 80))],
        "va0": [_obj("v0", "stop", (15, 15, 45, 50)), _obj("v1", "speed", (60, 10, 80, 30))],
        "va1": [_obj("v2", "yield", (30, 20, 60, 60), exterior=True), _obj("v3", "yield", (40, 30, 70, 70))],
    }
    for key, objs in objects.items():
        img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"{key}.jpg", quality=95)
        (root / "annotations" / f"{key}.json").write_text(
            json.dumps({"width": 120, "height": 90, "ispano": False, "objects": objs}))
    (root / "splits" / "train.txt").write_text("tr0\ntr1\ntr2\ntr3\n")
    (root / "splits" / "val.txt").write_text("va0\nva1\n\n")


def test_slack_box_contains_box_and_is_clipped():
    bbox = {"xmin": 10.4, "ymin": 20.6, "xmax": 30.2, "ymax": 50.9}
    for alphas in ([0, 0, 0, 0], [1, 1, 1, 1], object_alphas("x", 3), [0.25, 0.5, 0.75, 1.0]):
        l, t, r, b = slack_box(bbox, 1000, 1000, alphas, 1.0)
        assert l <= 10.4 and t <= 20.6 and r >= 30.2 and b >= 50.9
    w, h = 30.2 - 10.4, 50.9 - 20.6
    assert slack_box(bbox, 1000, 1000, [0.25, 0.5, 0.5, 1.0], 1.0) == (   # (left, right, top, bottom)
        int(np.floor(10.4 - 0.25 * w)), int(np.floor(20.6 - 0.5 * h)),
        int(np.ceil(30.2 + 0.5 * w)), int(np.ceil(50.9 + 1.0 * h)))
    assert slack_box(bbox, 1000, 1000, [0, 0, 0.75, 0], 1.0)[1] == 0                 # clipped at the top
    assert slack_box(bbox, 1000, 1000, [1, 1, 1, 1], 0.0) == (10, 20, 31, 51)       # lambda 0: the box
    assert slack_box(bbox, 35, 60, [1, 1, 1, 1], 1.0) == (0, 0, 35, 60)            # clipped to image
    # the authors' variant splits one total slack of lambda * size between the two sides
    l, t, r, b = slack_box(bbox, 1000, 1000, [0.25, 0.5], 1.0, mode="split")
    assert (l, r) == (int(np.floor(10.4 - 0.25 * w)), int(np.ceil(30.2 + 0.75 * w)))
    assert object_alphas("o1", 0).shape == (4,) and np.array_equal(object_alphas("o1", 0), object_alphas("o1", 0))
    assert not np.array_equal(object_alphas("o1", 0), object_alphas("o1", 1))


def test_mtsd_filtering_labels_geometry_and_determinism(tmp_path):
    root = tmp_path / "mtsd"
    write_fake_mtsd(root)
    cfg = {"root": str(root), "val_fraction": 0.0}
    p = prepare("mtsd", cfg, seed=7)
    # kept train objects: o0 stop, o1 yield, o3 yield, o5 stop, o9 yield (o2, o4, o6, o7, o8 dropped)
    assert p.class_names == ["stop", "yield"] and p.num_classes == 2
    assert len(p.y_train) == 5 and len(p.y_val) == 0
    assert sorted(p.y_train.tolist()) == [0, 0, 1, 1, 1]
    # test = official val: v0 stop, v3 yield; v1 (speed, unknown to train) and v2 (exterior) dropped
    assert sorted(p.y_test.tolist()) == [0, 1]
    assert p.x_train.dtype == torch.uint8 and p.x_train.shape[1:] == (3, 64, 64)
    assert p.x_test.shape == (2, 3, 64, 64)
    # geometry: the o0 crop equals the image cut at its slack box, resized bilinearly
    box = slack_box({"xmin": 10, "ymin": 10, "xmax": 40, "ymax": 40}, 120, 90, object_alphas("o0", 7))
    with Image.open(root / "images" / "tr0.jpg") as im:
        ref = np.asarray(im.convert("RGB").crop(box).resize((64, 64), Image.Resampling.BILINEAR))
    ref_t = torch.from_numpy(ref.transpose(2, 0, 1).copy())
    assert any(torch.equal(ref_t, x) for x in p.x_train)
    # determinism by seed
    assert torch.equal(prepare_mtsd(cfg, seed=7).x_train, p.x_train)
    assert not torch.equal(prepare_mtsd(cfg, seed=8).x_train, p.x_train)
    # size, min_per_class and the validation split from train
    q = prepare_mtsd({"root": str(root), "size": 32, "min_per_class": 3, "val_fraction": 0.4}, seed=0)
    assert q.class_names == ["yield"] and q.x_train.shape[1:] == (3, 32, 32)
    assert len(q.y_train) + len(q.y_val) == 3 and len(q.y_val) == 1 and len(q.y_test) == 1


def test_mtsd_clear_errors(tmp_path):
    with pytest.raises(DataError, match="root is not set"):
        prepare_mtsd({}, 0)
    with pytest.raises(DataError, match="annotations/"):
        prepare_mtsd({"root": str(tmp_path)}, 0)
    root = tmp_path / "m"
    write_fake_mtsd(root)
    (root / "splits" / "val.txt").unlink()
    with pytest.raises(DataError, match="val.txt"):
        prepare_mtsd({"root": str(root)}, 0)
    (root / "splits" / "val.txt").write_text("missing_key\n")
    with pytest.raises(DataError, match="missing_key.json"):
        prepare_mtsd({"root": str(root)}, 0)


# ------------------------------------------------------------------------------- image folder
def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("crack", "ok", "squat"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                size = (20 + i, 30)  # differing sizes, resized anyway
                Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(d / f"{i}.png")
            (d / ".hidden.png").write_bytes(b"")
            (d / "notes.txt").write_text("ignored")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(tmp_path / "train" / "ok" / "gray.png")
    p = prepare("image_folder", {"root": str(tmp_path), "size": 24, "val_fraction": 0.25}, seed=0)
    assert p.class_names == ["crack", "ok", "squat"] and p.num_classes == 3
    assert p.x_train.shape[1:] == (3, 24, 24) and p.x_train.dtype == torch.uint8
    assert len(p.y_train) + len(p.y_val) == 16 and len(p.y_val) == 4
    assert sorted(p.y_test.tolist()) == [0, 0, 1, 1, 2, 2]
    q = prepare_image_folder({"root": str(tmp_path), "size": [16, 20]}, seed=0)
    assert q.x_test.shape == (6, 3, 16, 20)
    (tmp_path / "test" / "rust").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "rust" / "a.png")
    with pytest.raises(DataError, match="rust"):
        prepare_image_folder({"root": str(tmp_path)}, seed=0)
    with pytest.raises(DataError, match="not found"):
        prepare_image_folder({"root": str(tmp_path / "none")}, seed=0)
