"""How to use the cores: the ratios that decide each kind of stage's processes and threads, measured
side by side in one run on the default's robust CNN (width 8, 28 x 28):

* training, the same TRADES steps (batch 100, PGD-5) three ways: one process at 2 threads (what the
  training stages do), two processes at 1 thread each sharing the steps (independent work, e.g. two
  models trained at once), and data parallel over the batch's two splits in 2 workers at 1 thread
  (``train.batch_splits: 2``, robust_abstain/training/data_parallel.py);
* evaluation, the evaluate stage's attacks (APGD-CE at eps and 2 eps, APGD-conf at 2 eps, 40 steps)
  of models/base.pt on 500 test points in pieces of 250: two worker processes at 1 thread (what the
  evaluate stages do) against one process at 2 threads;
* start-up: importing what a training stage imports (a fresh interpreter).

Each variant is a fresh process (start-up excluded from the step timings, included in the start-up
line); medians over --repeats, in an alternating order. Ratios below 1 favour the first variant.

Usage: python bench/bench_parallel.py [--steps 100] [--repeats 3] [--model models/base.pt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = r"""
import os, sys, time, contextlib, io
import torch
from torch.utils.data import TensorDataset
from robust_abstain.losses import LossConfig
from robust_abstain.models.checkpoint import ModelSpec
from robust_abstain.training import TrainConfig, fit
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
steps, splits = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
x, y = torch.rand(steps * 100, 1, 28, 28, generator=g), torch.randint(0, 10, (steps * 100,), generator=g)
torch.manual_seed(0)
model = ModelSpec("cnn", (1, 28, 28), 10, (0.29,), (0.35,), 8).build()
loss = LossConfig("trades", beta=6.0, eps=0.1, pgd_steps=5)
cfg = TrainConfig(steps=steps, lr=3e-3, batch_size=100, n_val=10, select="last", batch_splits=splits)
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    fit(model, loss, TensorDataset(x, y), TensorDataset(x[:10], y[:10]), cfg, f"/tmp/bench-par-{os.getpid()}.pt")
print(time.perf_counter() - t)
"""

EVAL = r"""
import os, sys, time, torch
from robust_abstain.attacks.autoattack import AttackBudget
from robust_abstain.data import load_prepared
from robust_abstain.evaluation.empirical import PointSet, records_in_pieces
from robust_abstain.models.checkpoint import load_model
torch.set_num_threads(1)
model = load_model(sys.argv[1])[0]
x, y = (t[:500] for t in load_prepared(sys.argv[2]).split("test").tensors)
t = time.perf_counter()
records_in_pieces(model, {"test": PointSet(x, y, torch.arange(len(y)))}, 0.05, ["apgd-ce"],
                  AttackBudget(steps=40, batch_size=250), sr_scales=(2,), desc=None)
print(time.perf_counter() - t)
"""


def _env(**kw: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "ACTIVE", **kw}


def _run(code: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _seconds(*procs: subprocess.Popen) -> float:
    """The slowest of processes started together (their wall time, start-up excluded)."""
    return max(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="TRADES steps of each training variant")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="models/base.pt", help="the evaluated model (dvc repro makes it)")
    ap.add_argument("--data", default="data/prepared.pt")
    args = ap.parse_args()
    s, half = str(args.steps), str(args.steps // 2)
    ev = (str(Path(args.model).resolve()), str(Path(args.data).resolve()))
    for f in ev:
        if not Path(f).is_file():
            sys.exit(f"{f} not found: run dvc repro (or pass --model / --data)")
    variants = {
        "train: 1 process x 2 threads": lambda: _seconds(_run(TRAIN, s, "1", BENCH_THREADS="2")),
        "train: 2 processes x 1 thread, half the steps each": lambda: _seconds(
            _run(TRAIN, half, "1", BENCH_THREADS="1"), _run(TRAIN, half, "1", BENCH_THREADS="1")),
        "train: data parallel, 2 splits in 2 workers x 1 thread": lambda: _seconds(
            _run(TRAIN, s, "2", BENCH_THREADS="1", RA_WORKERS="2", OMP_WAIT_POLICY="PASSIVE")),
        "evaluate: pieces in 2 workers x 1 thread": lambda: _seconds(_run(EVAL, *ev, RA_WORKERS="2")),
        "evaluate: pieces in 1 process x 2 threads": lambda: _seconds(_run(EVAL, *ev, RA_WORKERS="1",
                                                                           RA_THREADS="2")),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            times[name].append(variants[name]())
    imports = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import robust_abstain.training, robust_abstain.evaluation.empirical"],
                       env=_env(), check=True)
        imports.append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.repeats} (seconds, start-up excluded):")
    for k, v in med.items():
        print(f"  {k:<58}{v:7.2f}")
    two = med["train: 1 process x 2 threads"]
    print("ratios:")
    print(f"  training, 2 processes x 1 thread / 1 process x 2 threads:   "
          f"{med['train: 2 processes x 1 thread, half the steps each'] / two:.2f}")
    print(f"  training, data parallel 2 x 1 / 1 process x 2 threads:      "
          f"{med['train: data parallel, 2 splits in 2 workers x 1 thread'] / two:.2f}")
    print(f"  evaluation, 2 workers x 1 thread / 1 process x 2 threads:   "
          f"{med['evaluate: pieces in 2 workers x 1 thread'] / med['evaluate: pieces in 1 process x 2 threads']:.2f}")
    print(f"start-up of a stage's imports (fresh interpreter): median {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
