"""Stage synthetic: the paper's Figure 1 (standard vs TRADES vs ERA decision regions on 3 Gaussians)."""
import argparse

from robust_abstain import stage
from robust_abstain.parallel import TRAIN_THREADS
from robust_abstain.data import prepare
from robust_abstain.figure1 import SyntheticConfig, plot_figure1, train_synthetic_models
from robust_abstain.io import save_figure, save_json
from robust_abstain.training import STATE_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--figure", default="reports/figures/fig1_synthetic.png")
    ap.add_argument("--metrics", default="results/synthetic.json")
    args = ap.parse_args()
    cfg = SyntheticConfig.from_params(stage.params("synthetic"), "synthetic")
    data = prepare("synthetic", cfg.data, cfg.seed)
    models = train_synthetic_models(data, cfg.eps, cfg.train, cfg.finetune, era_beta=cfg.era_beta,
                                    trades_beta=cfg.trades_beta, pgd_steps=cfg.pgd_steps,
                                    state_dir=STATE_DIR / "synthetic")
    splits = {s: data.split(s).tensors for s in ("train", "test")}
    fig, metrics = plot_figure1(models, splits, cfg.eps, cfg.seed)
    save_json(metrics, args.metrics)
    save_figure(fig, args.figure)
    for split, per_model in metrics.items():
        for k, v in per_model.items():
            print(split, k, {m: round(s, 4) for m, s in v.items()})


if __name__ == "__main__":
    stage.run(main, threads=TRAIN_THREADS)
