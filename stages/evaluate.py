"""Stage evaluate: attack one model once (APGD-CE and APGD-conf at eps and 2 eps) on the test points
and write its per-sample records."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.data import load_prepared
from robust_abstain.evaluate import empirical_records
from robust_abstain.io import save_csv
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import choice, count, non_negative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--section", default="evaluate", help="params section (threat model)")
    args = ap.parse_args()
    p = stage.params(args.section)
    eps = non_negative(p.get("eps"), f"{args.section}.eps")
    norm = choice(p.get("norm", "linf"), f"{args.section}.norm", ["linf", "l2"])
    n = count(p.get("n_points", 1000), f"{args.section}.n_points")
    model, _, _ = load_model(args.model)
    test = load_prepared(args.data).split("test")
    x, y = test.tensors[0][:n], test.tensors[1][:n]
    df = empirical_records(model, x, y, torch.arange(len(y)), eps, norm=norm,
                           steps=count(p.get("steps", 40), f"{args.section}.steps"),
                           restarts=count(p.get("restarts", 1), f"{args.section}.restarts"),
                           seed=count(p.get("seed", 0), f"{args.section}.seed", min=0),
                           batch_size=count(p.get("batch_size", 500), f"{args.section}.batch_size"),
                           sr_attack=bool(p.get("sr_attack", True)))
    save_csv(df, args.out)
    acc = (df.pred == df.label).mean()
    rob = ((df.adv_pred_1x == df.pred) & (df.pred == df.label)).mean()
    print(f"{args.model}: natural {acc:.3f}, robust accuracy at eps={eps}: {rob:.3f} -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
