"""The paper's Figure 1 on the synthetic 3-Gaussians: decision regions of a standard, a TRADES and
an ERA model (the ERA model fine-tuned from the TRADES one), with their robust accuracy and robust
inaccuracy under 40-step APGD."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import Prepared
from .evaluation.empirical import natural
from .analysis.metrics import rates
from .attacks.apgd import worst_case_predictions
from .losses import LossConfig
from .models.checkpoint import ModelSpec
from .params import Section, count, non_negative, positive
from .training import TrainConfig, fit


@dataclass(frozen=True)
class SyntheticConfig(Section):
    """The ``synthetic`` section: the 3-Gaussians data (``data``, see data/synthetic.py), the threat
    model, and the training of the three models of Figure 1."""

    seed: int
    eps: float
    data: dict
    pgd_steps: int
    trades_beta: float
    era_beta: float
    train: dict
    finetune: dict

    def validate(self, prefix: str) -> None:
        count(self.seed, f"{prefix}.seed", min=0)
        positive(self.eps, f"{prefix}.eps")
        count(self.pgd_steps, f"{prefix}.pgd_steps")
        non_negative(self.trades_beta, f"{prefix}.trades_beta")
        non_negative(self.era_beta, f"{prefix}.era_beta")
        TrainConfig.from_params(self.train, f"{prefix}.train")
        TrainConfig.from_params(self.finetune, f"{prefix}.finetune")


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
    """Per-point robustness (40-step APGD-CE against the model's own prediction, Linf ``eps``) and
    accuracy, with their rates: nat_acc, rob_acc (robust and accurate) and rob_inacc (robust and
    inaccurate); rob_acc + rob_inacc + the non-robust rate = 1."""
    pred, _ = natural(model, x)
    adv, _ = worst_case_predictions(model, x, pred, eps, norm="linf", steps=40, restarts=1,
                                    objective="ce", seed=seed, batch_size=1000, progress=False)
    robust, acc = adv == pred, pred == y
    nat_acc, rob_acc, rob_inacc = rates(acc, robust)
    return {"nat_acc": nat_acc, "rob_acc": rob_acc, "rob_inacc": rob_inacc, "robust": robust.numpy(),
            "acc": acc.numpy()}


def _draw_points(ax, x: np.ndarray, y: np.ndarray, m: dict, colors: np.ndarray) -> None:
    """Robust-accurate points as dots in their class colour, non-robust ones as rings in their
    class colour, robust-inaccurate ones as red crosses."""
    ra, ri, nr = m["robust"] & m["acc"], m["robust"] & ~m["acc"], ~m["robust"]
    ax.scatter(x[ra, 0], x[ra, 1], c=colors[y[ra]], s=5, label="robust & accurate")
    ax.scatter(x[nr, 0], x[nr, 1], facecolors="none", edgecolors=colors[y[nr]], s=14, linewidths=0.8,
               label="non-robust")
    ax.scatter(x[ri, 0], x[ri, 1], c="red", marker="x", s=22, linewidths=1.0, label="robust & inaccurate")


def plot_figure1(models: dict, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], eps: float, seed: int = 0):
    """Decision regions of each model (columns) with the points of each split (rows), marking
    robust-accurate, non-robust and robust-inaccurate points (colours: true class). Returns
    (figure, metrics[split][model] with nat_acc, rob_acc, rob_inacc)."""
    side = 300
    grid = torch.linspace(0, 1, side)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    colors = np.array(["#4c72b0", "#dd8452", "#2ca02c"])
    cmap = matplotlib.colors.ListedColormap(colors)
    regions = {name: natural(model, pts)[0].view(side, side).numpy() for name, model in models.items()}
    fig, axes = plt.subplots(len(splits), len(models), figsize=(4.4 * len(models), 4.8 * len(splits)),
                             squeeze=False)
    out: dict = {}
    for row, (split, (x, y)) in enumerate(splits.items()):
        out[split] = {}
        for ax, (name, model) in zip(axes[row], models.items()):
            ax.imshow(regions[name], origin="lower", extent=(0, 1, 0, 1), alpha=0.22, cmap=cmap,
                      vmin=0, vmax=len(colors) - 1, interpolation="nearest")
            m = robustness(model, x, y, eps, seed)
            out[split][name] = {k: v for k, v in m.items() if k not in ("robust", "acc")}
            _draw_points(ax, x.numpy(), y.numpy(), m, colors)
            ax.set_title(f"{name}, {split} points (n = {len(y)})\nnat acc {100 * m['nat_acc']:.1f} %   "
                         f"rob acc {100 * m['rob_acc']:.1f} %   rob inacc {100 * m['rob_inacc']:.1f} %",
                         fontsize=9)
            ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_aspect("equal")
    legend = axes[0][0].legend(loc="lower right", fontsize=7, framealpha=0.8)
    legend.legend_handles[0].set_color("dimgrey"), legend.legend_handles[1].set_edgecolor("dimgrey")
    fig.suptitle(f"Figure 1: decision regions on 3 Gaussians (classes 0 blue, 1 orange, 2 green), Linf eps = "
                 f"{eps}, APGD-40; ERA fine-tuned from TRADES", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig, out
