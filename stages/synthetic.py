"""Stage synthetic: the paper's Figure 1 (standard vs TRADES vs ERA decision regions on 3 Gaussians)."""
import argparse

from robust_abstain import stage
from robust_abstain.data import prepare
from robust_abstain.figure1 import plot_figure1, train_synthetic_models
from robust_abstain.io import save_figure, save_json
from robust_abstain.params import count, non_negative, positive
from robust_abstain.train import STATE_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--figure", default="reports/figures/fig1_synthetic.png")
    ap.add_argument("--metrics", default="results/synthetic.json")
    args = ap.parse_args()
    p = stage.params("synthetic")
    seed = count(p.get("seed", 0), "synthetic.seed", min=0)
    data = prepare("synthetic", p.get("data") or {}, seed)
    eps = positive(p.get("eps"), "synthetic.eps")
    models = train_synthetic_models(
        data, eps, p.get("train") or {}, p.get("finetune") or {},
        era_beta=non_negative(p.get("era_beta", 1.0), "synthetic.era_beta"),
        trades_beta=non_negative(p.get("trades_beta", 6.0), "synthetic.trades_beta"),
        pgd_steps=count(p.get("pgd_steps", 10), "synthetic.pgd_steps"), state_dir=STATE_DIR / "synthetic")
    splits = {s: data.split(s).tensors for s in ("train", "test")}
    fig, metrics = plot_figure1(models, splits, eps, seed)
    save_json(metrics, args.metrics)
    save_figure(fig, args.figure)
    for split, per_model in metrics.items():
        for k, v in per_model.items():
            print(split, k, {m: round(s, 4) for m, s in v.items()})


if __name__ == "__main__":
    stage.run(main)
