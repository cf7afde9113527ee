"""The budget study: how the paper's metrics move with optimiser steps and learning rate.

A run trains one model of the pipeline (the robust base, a fine-tune of the sweep, a certified
fine-tune, ...) exactly as its params section says, except for two things the study varies: the
learning rate, held constant (no decay), and the number of steps, read off at checkpoints. At each
checkpoint the model is measured on the **validation** split only:

* empirical runs: R_nat, and APGD-CE on F(x) at eps and 2 eps: R_rob^acc and R_rob^-acc at each;
* certified runs: CERTIFY (Cohen et al.) of the smoothed model: certified accuracy and certified
  inaccuracy at each radius (an abstention counts as neither).

With a constant lr, the model at checkpoint s of a run is the model a budget of ``steps: s`` at that
lr trains, so a budget read off the study's curves is one the pipeline can train. Each run's
randomness derives from its seed as in :func:`robust_abstain.training.fit` (data order per epoch, the
loss's draws), so a run is reproducible and a finished run is never redone (:func:`run_curve`'s
caller keeps one CSV per run).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..attacks.apgd import worst_case_predictions
from ..evaluation.certify import Smooth
from ..evaluation.empirical import natural
from ..losses import LossConfig, get_loss
from .batches import epoch_streams, seeded_subset
from .config import TrainConfig, make_optimizer
from .loop import batch_step


@dataclass(frozen=True)
class Run:
    """One curve: ``family`` (e.g. ``finetune``), ``name`` (e.g. ``era-1``), its loss and training
    config (``train.lr`` is the run's constant lr), and what to measure at the checkpoints."""
    family: str
    name: str
    loss: LossConfig
    train: TrainConfig
    checkpoints: tuple[int, ...]
    kind: str = "empirical"               # "empirical" | "certified"
    eps: float = 0.0                      # empirical: the evaluation eps (2 eps is measured too)
    radii: tuple[float, ...] = (0.0,)     # certified: the radii of certified (in)accuracy
    certify: dict = field(default_factory=dict)  # certified: n0, n, alpha, sigma, batch_size

    @property
    def tag(self) -> str:
        return f"{self.family}-{self.name}-lr{self.train.lr:g}"


def measure(model: torch.nn.Module, run: Run, x: torch.Tensor, y: torch.Tensor, steps: int,
            seed: int) -> dict[str, float]:
    """The run's validation metrics of ``model`` (in eval mode; attacks in fp32)."""
    model.eval()
    if run.kind == "certified":
        c = run.certify
        smooth = Smooth(model, int(y.max()) + 1 if len(y) else 2, c["sigma"])
        pred, radius, _ = smooth.certify_points(x, torch.arange(len(x)), seed, c["n0"], c["n"],
                                                c["alpha"], c.get("batch_size", 1000))
        pred, radius, y = pred.cpu(), radius.cpu(), y.cpu()
        out = {}
        for r in run.radii:
            held = (pred >= 0) & (radius >= r) if r > 0 else pred >= 0
            out[f"cert_acc@{r:g}"] = ((pred == y) & held).float().mean().item()
            out[f"cert_inacc@{r:g}"] = ((pred != y) & held).float().mean().item()
        return out
    pred, _ = natural(model, x)
    pred, y = pred.to(x.device), y.to(x.device)
    out = {"nat_acc": (pred == y).float().mean().item()}
    robust = torch.ones_like(pred, dtype=torch.bool)
    for tag, eps in (("1x", run.eps), ("2x", 2 * run.eps)):
        adv, _ = worst_case_predictions(model, x, pred, eps, steps=steps, seed=seed, device=x.device)
        robust &= adv.to(x.device) == pred  # per-point worst case: robust at 2 eps needs eps too
        out[f"rob_acc_{tag}"] = (robust & (pred == y)).float().mean().item()
        out[f"rob_inacc_{tag}"] = (robust & (pred != y)).float().mean().item()
    return out


def run_curve(run: Run, model: torch.nn.Module, train: TensorDataset, val: TensorDataset,
              device: torch.device, attack_steps: int = 20, progress: bool = True) -> pd.DataFrame:
    """Train ``model`` for ``max(run.checkpoints)`` steps at the constant lr ``run.train.lr`` and
    measure it on ``val`` at every checkpoint (0: the initial model). One row per checkpoint."""
    cfg = run.train
    loss_fn = get_loss(run.loss.name)
    train = seeded_subset(train, cfg.n_train, cfg.seed)
    x, y = (t.to(device) for t in train.tensors)
    xv, yv = (t.to(device) for t in val.tensors)
    model = copy.deepcopy(model).to(device)
    opt = make_optimizer(model, cfg)
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    rows, step, total = [], 0, max(run.checkpoints)
    bar = tqdm(total=total, desc=run.tag, disable=not progress, mininterval=5)
    for epoch in range(math.ceil(total / per_epoch) + 1):
        perm, loss_g = epoch_streams(cfg.seed, epoch, len(y), device)  # as fit's epochs
        perm = perm.to(device)
        for b in range(per_epoch):
            if step in run.checkpoints:
                rows.append({"step": step, **measure(model, run, xv, yv, attack_steps, cfg.seed + 7)})
            if step == total:
                bar.close()
                return _frame(run, rows)
            model.train()
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            batch_step(model, opt, loss_fn, run.loss, x[idx], y[idx], cfg, epoch, b, loss_g)
            step += 1
            bar.update()
    raise AssertionError("unreachable: the loop ends at the last checkpoint")


def _frame(run: Run, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.insert(0, "lr", run.train.lr)
    df.insert(0, "name", run.name)
    df.insert(0, "family", run.family)
    return df


def plateau(steps: pd.Series, values: pd.Series, tol: float) -> int:
    """The first checkpoint from which ``values`` stays within ``tol`` of its final value (the
    curve's plateau; ``tol`` in the metric's units, e.g. 0.01 for one point of accuracy)."""
    order = steps.argsort().to_numpy()
    s, v = steps.to_numpy()[order], values.to_numpy()[order]
    final = v[-1]
    for i in range(len(v)):
        if all(abs(w - final) <= tol for w in v[i:]):
            return int(s[i])
    return int(s[-1])
