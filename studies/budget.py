"""The budget study (issue 10): validation metrics against optimiser steps, one curve per lr.

Phase ``bases`` trains the models the pipeline trains from scratch (core, robust base, noise base);
phase ``finetunes`` fine-tunes from the pipeline's own base models (``--base``, ``--noise-base``:
run ``dvc repro train@base train@noise_base`` first) every entry of the sweep and the headline, in
both tracks. Everything else (architecture, loss, batch size, training subset, seed) is the
params file's, so the budget chosen from these curves is one the pipeline trains. No test point
is read: every metric is on the validation split.

Writes, under --out (default reports/study): budget_<phase>.csv (every checkpoint of every run),
budget_<phase>.md (the plateau table) and budget_<phase>.png (the curves); finished runs are kept in
--cache (results/study), keyed by the run, its starting weights and the data, and never redone,
so a killed study resumes where it stopped.

Usage:
    python studies/budget.py --phase bases --jobs 2            # 2 CPU cores: see the committed .md
    python studies/budget.py --phase finetunes --jobs 2
    python studies/budget.py --phase bases --lrs 0.001 --steps 0,100 --jobs 2   # a quick look on CPU
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_report import write_report  # noqa: E402

from robust_abstain import stage  # noqa: E402
from robust_abstain.data import load_prepared  # noqa: E402
from robust_abstain.errors import ParamError  # noqa: E402
from robust_abstain.io import save_csv  # noqa: E402
from robust_abstain.losses import LossConfig  # noqa: E402
from robust_abstain.params import load_params, section  # noqa: E402
from robust_abstain.training import model_spec  # noqa: E402
from robust_abstain.training.study import Run, run_curve  # noqa: E402
from robust_abstain.device import resolve_device  # noqa: E402
from robust_abstain.training import TrainConfig, seeded_subset  # noqa: E402

PHASES = {
    "bases": {"lrs": (3e-4, 1e-3, 3e-3), "steps": (0, 100, 200, 400, 800, 1600, 3200)},
    "finetunes": {"lrs": (1e-4, 5e-4, 2e-3), "steps": (0, 50, 100, 200, 400, 800)},
}


def _train_cfg(p: dict, prefix: str, lr: float) -> TrainConfig:
    t = {k: v for k, v in (p.get("train") or {}).items() if k not in ("steps", "epochs", "lr_decay_at")}
    return TrainConfig.from_params({**t, "lr": lr, "lr_decay_at": 1.0}, f"{prefix}.train")


def _certify(params: dict) -> dict:
    c = section(params, "certify")
    return {k: c[k] for k in ("n0", "n", "alpha", "sigma", "batch_size")}


def runs_for(phase: str, params: dict, lrs, steps) -> list[tuple[Run, str | None]]:
    """(run, the checkpoint it starts from; None: a fresh model of the section's arch)."""
    eps = float(section(params, "evaluate")["eps"])
    radii = (0.0, 0.2, 0.4)
    out = []
    if phase == "bases":
        for name, kind in (("core", "empirical"), ("base", "empirical"), ("noise_base", "certified")):
            p = section(params, name)
            loss = LossConfig.from_params(p.get("loss") or {}, f"{name}.loss")
            for lr in lrs:
                run = Run("bases", name, loss, _train_cfg(p, name, lr), tuple(steps), kind, eps, radii,
                          _certify(params) if kind == "certified" else {})
                out.append((run, None))
        return out
    tracks = (("finetune", "sweep", "loss", "empirical", "base"),
              ("cert_finetune", "cert_sweep", "cert_loss", "certified", "noise_base"))
    for sec, sweep, headline, kind, init in tracks:
        p = section(params, sec)
        entries = dict(section(params, sweep))
        h = section(params, headline)
        entries.setdefault(f"{h['name']}-{h['beta']:g}".replace(".", "_"), h)
        for key, e in entries.items():
            loss = LossConfig.from_params({**(p.get("loss") or {}), "name": e["name"], "beta": e["beta"]},
                                          f"{sec}.loss")
            for lr in lrs:
                run = Run(sec, key, loss, _train_cfg(p, sec, lr), tuple(steps), kind, eps, radii,
                          _certify(params) if kind == "certified" else {})
                out.append((run, init))
    return out


def _one(job: tuple) -> pd.DataFrame:
    run, init, args = job
    import torch
    torch.set_num_threads(args.threads)
    from robust_abstain.models.checkpoint import load_model
    start = None if init is None else hashlib.sha256(Path(getattr(args, init)).read_bytes()).hexdigest()
    data_digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    key = hashlib.sha256(repr((run, start, data_digest, args.n_val, args.n_cert, args.attack_steps)
                              ).encode()).hexdigest()[:10]  # a changed base or data is a new run
    cached = Path(args.cache) / f"{run.tag}-{key}.csv"
    if cached.is_file():
        return pd.read_csv(cached)
    data = load_prepared(args.data)
    if init is None:
        torch.manual_seed(run.train.seed)
        model = model_spec(section(load_params(args.params), run.name), data, run.name).build()
    else:
        model = load_model(getattr(args, init))[0]
    n = args.n_cert if run.kind == "certified" else args.n_val
    val = seeded_subset(data.split("val"), n, 12345)
    df = run_curve(run, model, data.split("train"), val, resolve_device(args.device), args.attack_steps)
    save_csv(df, cached)
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=sorted(PHASES), required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--base", default="models/base.pt")
    ap.add_argument("--noise-base", dest="noise_base", default="models/cert/noise_base.pt")
    ap.add_argument("--lrs", help="comma-separated learning rates (default: the phase's grid)")
    ap.add_argument("--steps", help="comma-separated checkpoints (default: the phase's)")
    ap.add_argument("--n-val", type=int, default=500, help="validation points (empirical runs)")
    ap.add_argument("--n-cert", type=int, default=200, help="validation points (certified runs)")
    ap.add_argument("--attack-steps", type=int, default=20, help="APGD-CE steps of the measurements")
    ap.add_argument("--names", help="comma-separated run names to keep (default: all; e.g. trades-1,era-1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="reports/study")
    ap.add_argument("--cache", default="results/study")
    args = ap.parse_args()
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else PHASES[args.phase]["lrs"]
    steps = [int(v) for v in args.steps.split(",")] if args.steps else PHASES[args.phase]["steps"]
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    keep = set(args.names.split(",")) if args.names else None
    jobs = [(run, init, args) for run, init in runs_for(args.phase, load_params(args.params), lrs, steps)
            if keep is None or run.name in keep]
    if not jobs:
        raise ParamError(f"no run of phase {args.phase} is named in --names {args.names}")
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            frames = pool.map(_one, jobs, chunksize=1)
    else:
        frames = [_one(j) for j in jobs]
    command = " ".join(["python", "studies/budget.py", *sys.argv[1:]])
    write_report(pd.concat(frames, ignore_index=True), args.phase, Path(args.out), command)


if __name__ == "__main__":
    stage.run(main)
