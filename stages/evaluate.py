"""Stage evaluate: attack one model once (APGD-CE and APGD-conf at eps and 2 eps) on the test points,
and the same on validation points (from the training split; every choice downstream is made on
them), and write the per-sample records of each."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.data import load_prepared
from robust_abstain.evaluate import empirical_records
from robust_abstain.io import save_csv
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import choice, count, non_negative, scales
from robust_abstain.records import accurate, robust
from robust_abstain.train import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="test records")
    ap.add_argument("--val-out", help="validation records (evaluate.n_val_points of the val split)")
    ap.add_argument("--section", default="evaluate", help="params section (threat model)")
    args = ap.parse_args()
    p = stage.params(args.section)
    eps = non_negative(p.get("eps"), f"{args.section}.eps")
    norm = choice(p.get("norm", "linf"), f"{args.section}.norm", ["linf", "l2"])
    sec = args.section
    n = count(p.get("n_points", 1000), f"{sec}.n_points")
    kw = dict(norm=norm, steps=count(p.get("steps", 40), f"{sec}.steps"),
              restarts=count(p.get("restarts", 1), f"{sec}.restarts"),
              seed=count(p.get("seed", 0), f"{sec}.seed", min=0),
              batch_size=count(p.get("batch_size", 500), f"{sec}.batch_size"),
              sr_scales=scales(p.get("sr_scales", [2]), f"{sec}.sr_scales"))
    jobs = [("test", n, args.out)]
    if args.val_out:
        jobs.append(("val", count(p.get("n_val_points"), f"{sec}.n_val_points"), args.val_out))
    model, _, _ = load_model(args.model)
    model.to(resolve_device(p.get("device", "auto"), f"{sec}.device"))
    prepared = load_prepared(args.data)
    for split, n_split, out in jobs:
        ds = prepared.split(split)
        x, y = ds.tensors[0][:n_split], ds.tensors[1][:n_split]
        df = empirical_records(model, x, y, torch.arange(len(y)), eps, **kw)
        save_csv(df, out)
        print(f"{args.model} ({split}): natural {accurate(df).mean():.3f}, robust accuracy at "
              f"eps={eps}: {(accurate(df) & robust(df, 1)).mean():.3f} -> {out}")


if __name__ == "__main__":
    stage.run(main)
