"""Stage evaluate: attack one model once (APGD-CE and APGD-conf at eps and 2 eps) on the test points,
and the same on validation points (from the training split; every choice downstream is made on
them), and write the per-sample records of each."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.analysis.records import accurate, robust
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.empirical import EvaluateConfig, empirical_records
from robust_abstain.io import save_csv
from robust_abstain.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="test records")
    ap.add_argument("--val-out", help="validation records (evaluate.n_val_points of the val split)")
    ap.add_argument("--section", default="evaluate", help="params section (threat model)")
    args = ap.parse_args()
    sec = args.section
    cfg = EvaluateConfig.from_params(stage.params(sec), sec)
    jobs = [("test", cfg.n_points, args.out)]
    if args.val_out:
        if cfg.n_val_points is None:
            raise ParamError(f"{sec} lacks ['n_val_points'], needed for --val-out")
        jobs.append(("val", cfg.n_val_points, args.val_out))
    model, _, _ = load_model(args.model)
    model.to(resolve_device(cfg.device, f"{sec}.device"))
    prepared = load_prepared(args.data)
    for split, n_split, out in jobs:
        ds = prepared.split(split)
        x, y = ds.tensors[0][:n_split], ds.tensors[1][:n_split]
        df = empirical_records(model, x, y, torch.arange(len(y)), cfg.eps, norm=cfg.norm, steps=cfg.steps,
                               restarts=cfg.restarts, seed=cfg.seed, batch_size=cfg.batch_size,
                               scales=cfg.attack_scales())
        save_csv(df, out)
        print(f"{args.model} ({split}): natural {accurate(df).mean():.3f}, robust accuracy at "
              f"eps={cfg.eps}: {(accurate(df) & robust(df, 1)).mean():.3f} -> {out}")

if __name__ == "__main__":
    stage.run(main)
