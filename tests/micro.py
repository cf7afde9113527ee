"""A micro profile of the real params.yaml: the same schema and DAG, tiny sizes, fake idx data."""
from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import yaml

from robust_abstain.dag import pipeline_section

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 100, seed: int = 0) -> Path:
    """Class-dependent blobs so that a tiny CNN learns something in one epoch."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(y):
            r, col = divmod(int(c), 5)
            x[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * col:6 + 5 * col] += 180
        write_idx(root / f"{split}-images-idx3-ubyte.gz", np.clip(x, 0, 255))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)
    return root


def micro_params(data_root: Path, source: str = "params.yaml") -> dict:
    """``source`` (a Fashion-MNIST profile of the project: params.yaml, params-full.yaml) shrunk to
    seconds: tiny data, budgets and evaluations, one sweep entry per track."""
    p = yaml.safe_load((ROOT / source).read_text())
    p["data"]["fashion_mnist"].update(root=str(data_root), download_root=None, n_val=60, n_test=40)
    p["synthetic"].update(data={"n": 120, "n_test": 60, "std": 0.15, "val_fraction": 0.2}, pgd_steps=2,
                          train={"epochs": 2, "lr": 0.01, "batch_size": 64, "select": "last", "seed": 0},
                          finetune={"epochs": 1, "lr": 0.001, "batch_size": 64, "select": "last", "seed": 0})
    p["core"]["train"].update(steps=3, n_train=300)
    p["core"]["width"] = 8
    p["base"]["train"].update(steps=2, n_train=200)
    p["base"]["loss"]["pgd_steps"] = 2
    p["base"]["width"] = 8
    p["finetune"]["loss"]["pgd_steps"] = 2
    p["finetune"]["train"].update(steps=2, n_train=100, n_val=40)
    p["sweep"] = {"era-1": {"name": "era", "beta": 1.0}}  # one entry each: every stage kind, fewer runs
    for sec in ("evaluate", "evaluate_l2"):   # pieces of 16 points: several per stage, in worker processes
        p[sec].update(steps=3, n_points=40, n_val_points=30, batch_size=16)
    p["evaluate"]["adaptive_push_steps"] = 2
    p["noise_base"]["train"].update(steps=2, n_train=200)
    p["noise_base"]["width"] = 8
    p["cert_finetune"]["loss"]["k"] = 2
    p["cert_finetune"]["train"].update(steps=1, n_train=40, n_val=20)
    p["cert_sweep"] = {"cra-4": {"name": "cra", "beta": 4.0}}
    p["certify"].update(n0=10, n=40, n_points=12, batch_size=100)
    p["report"]["n_taus"] = 5
    p["evaluate_strong"].update(n_points=10, steps=3, member_steps=2, n_target_classes=2, square_queries=10,
                                batch_size=5)
    p["selection_net"].update(n_train=64, label_steps=2, steps=4, batch_size=32, adv_steps=1, eval_steps=2, eval_restarts=1)
    p["mixing"].update(alphas=[0.5], betas=[0.5], n_choose=30, attack_views=["nonlin"],
                       s_grid=[0.5, 1.0], p_grid=[1.0, 2.0], c_grid=[0.0])
    p["pipeline"] = pipeline_section(p)
    return p


def make_project(dest: Path, params: dict) -> Path:
    """A copy of the project (code, stages, dvc.yaml) with the given params, as a git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "src", "scripts"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    (dest / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest
