"""The paper's Figure 1 on the synthetic 3-Gaussians: decision regions of a standard, a TRADES and
an ERA model (the ERA model fine-tuned from the TRADES one), with their robust accuracy and robust
inaccuracy under 40-step APGD."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import Prepared
from .evaluate import natural
from .attacks.apgd import worst_case_predictions
from .losses import LossConfig
from .models.checkpoint import ModelSpec
from .train import TrainConfig, fit


def train_synthetic_models(data: Prepared, eps: float, train: dict, finetune: dict, era_beta: float,
                           trades_beta: float, pgd_steps: int, state_dir: str | Path) -> dict:
    """The standard, TRADES and ERA models of Figure 1, each trained by :func:`fit` with its resume
    state in ``state_dir`` (removed when its fit finishes, so the figure never comes from stale
    weights)."""
    spec = ModelSpec("mlp", data.input_shape, data.num_classes, tuple(data.mean), tuple(data.std), 64)
    tr, va = data.split("train"), data.split("val")
    models = {}
    base_cfg = TrainConfig.from_params(train, "synthetic.train")
    ft_cfg = TrainConfig.from_params(finetune, "synthetic.finetune")
    for name, loss in (("standard", LossConfig("ce")),
                       ("TRADES", LossConfig("trades", beta=trades_beta, eps=eps, pgd_steps=pgd_steps))):
        torch.manual_seed(base_cfg.seed)
        models[name], _ = fit(spec.build(), loss, tr, va, base_cfg, Path(state_dir) / f"{name}.state.pt",
                              desc=name)
    era = spec.build()
    era.load_state_dict(models["TRADES"].state_dict())
    models["ERA"], _ = fit(era, LossConfig("era", beta=era_beta, eps=eps, pgd_steps=pgd_steps), tr, va,
                           ft_cfg, Path(state_dir) / "ERA.state.pt", desc="ERA")
    return models


def robustness(model, x, y, eps, seed=0) -> dict:
    pred, _ = natural(model, x)
    adv, _ = worst_case_predictions(model, x, pred, eps, norm="linf", steps=40, restarts=1,
                                    objective="ce", seed=seed, batch_size=1000, progress=False)
    robust, acc = adv == pred, pred == y
    return {"nat_acc": acc.float().mean().item(), "rob_acc": (robust & acc).float().mean().item(),
            "rob_inacc": (robust & ~acc).float().mean().item(), "robust": robust.numpy(), "acc": acc.numpy()}


def plot_figure1(models: dict, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], eps: float, seed: int = 0):
    """Decision regions of each model (columns) with the points of each split (rows), marking
    robust-accurate, non-robust and robust-inaccurate points. Returns (figure, metrics[split][model])."""
    grid = torch.linspace(0, 1, 300)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    colors = np.array(["#4c72b0", "#dd8452", "#55a868"])
    regions = {name: natural(model, pts)[0].view(300, 300).numpy() for name, model in models.items()}
    fig, axes = plt.subplots(len(splits), len(models), figsize=(4.0 * len(models), 4.2 * len(splits)),
                             squeeze=False)
    out: dict = {}
    for row, (split, (x, y)) in enumerate(splits.items()):
        out[split] = {}
        for ax, (name, model) in zip(axes[row], models.items()):
            ax.imshow(regions[name], origin="lower", extent=(0, 1, 0, 1), alpha=0.25,
                      cmap=matplotlib.colors.ListedColormap(colors), vmin=0, vmax=2, interpolation="nearest")
            m = robustness(model, x, y, eps, seed)
            out[split][name] = {k: v for k, v in m.items() if k not in ("robust", "acc")}
            xs, ys = x.numpy(), y.numpy()
            ra, ri = m["robust"] & m["acc"], m["robust"] & ~m["acc"]
            ax.scatter(xs[ra, 0], xs[ra, 1], c=colors[ys[ra]], s=5, label="robust & accurate")
            ax.scatter(xs[~m["robust"], 0], xs[~m["robust"], 1], facecolors="none", edgecolors="grey", s=9,
                       linewidths=0.5, label="non-robust")
            ax.scatter(xs[ri, 0], xs[ri, 1], c="red", marker="x", s=22, label="robust & inaccurate")
            ax.set_title(f"{name}, {split} points\nR_nat {100 * m['nat_acc']:.1f}%  R_rob^acc "
                         f"{100 * m['rob_acc']:.1f}%  R_rob^-acc {100 * m['rob_inacc']:.1f}%", fontsize=9)
            ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_aspect("equal")
    axes[0][0].legend(loc="lower left", fontsize=7, framealpha=0.8)
    fig.suptitle(f"Figure 1: decision regions on 3 Gaussians, Linf eps = {eps} (APGD-40); "
                 f"ERA fine-tuned from TRADES", fontsize=11)
    return fig, out
