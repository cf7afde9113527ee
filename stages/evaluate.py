"""Stage evaluate: attack one model once (the section's attack list, APGD-CE first, at eps and 2 eps,
and APGD-conf at sr_scales) on the test points, and the same on validation points (from the training
split; every choice downstream is made on them), and write the per-sample records of each. With
--cost-out, also what each attack of the list cost on the test points (model evaluations; JSON)."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.analysis.records import accurate, robust
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.empirical import AttackCost, EvaluateConfig, empirical_records
from robust_abstain.io import save_csv, save_json
from robust_abstain.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="test records")
    ap.add_argument("--val-out", help="validation records (evaluate.n_val_points of the val split)")
    ap.add_argument("--section", default="evaluate", help="params section (threat model)")
    ap.add_argument("--cost-out", help="JSON: model evaluations of each attack on the test points")
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
        cost = AttackCost()
        df = empirical_records(model, x, y, torch.arange(len(y)), cfg.eps, sr_scales=cfg.sr_scales,
                               attacks=cfg.attacks, budget=cfg.budget(), cost=cost)
        save_csv(df, out)
        if split == "test" and args.cost_out:
            save_json({"points": len(df), "evaluations": cost.evaluations}, args.cost_out)
        print(f"{args.model} ({split}): natural {accurate(df).mean():.3f}, robust accuracy at "
              f"eps={cfg.eps}: {(accurate(df) & robust(df, 1)).mean():.3f} -> {out}; attack seconds "
              + ", ".join(f"{k} {v:.1f}" for k, v in cost.seconds.items()))

if __name__ == "__main__":
    stage.run(main)
