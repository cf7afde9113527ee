"""Stage mixing: training-free baselines that mix the core and a robust model (linear mixing of
probabilities, and MixedNUTS's nonlinear mixing with its parameters chosen on the first
mixing.n_choose validation points), each attacked end to end with APGD-CE at eps; per-sample records
of every front point on the test and the validation points. See robust_abstain.evaluation.mixing."""
import argparse
import dataclasses

import torch

from robust_abstain import stage
from robust_abstain.analysis.records import accurate, robust
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.empirical import EvaluateConfig, PointSet
from robust_abstain.evaluation.mixing import MixingConfig, choice_logits, choose_nuts, front, mixing_records
from robust_abstain.io import save_csv, save_json
from robust_abstain.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--core-model", default="models/core.pt")
    ap.add_argument("--model", required=True, help="the robust model")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="test records of every front point")
    ap.add_argument("--val-out", required=True, help="validation records (evaluate.n_val_points)")
    ap.add_argument("--choice-out", required=True, help="MixedNUTS's chosen parameters (JSON)")
    args = ap.parse_args()
    mp, ep = stage.params("mixing", "evaluate")
    cfg, ecfg = MixingConfig.from_params(mp, "mixing"), EvaluateConfig.from_params(ep, "evaluate")
    if ecfg.n_val_points is None or cfg.n_choose > ecfg.n_val_points:
        raise ParamError(f"mixing.n_choose ({cfg.n_choose}) must be at most evaluate.n_val_points "
                         f"({ecfg.n_val_points})")
    dev = resolve_device(ecfg.device, "evaluate.device")
    core_model, robust_model = load_model(args.core_model)[0].to(dev), load_model(args.model)[0].to(dev)
    prepared = load_prepared(args.data)
    val, test = prepared.split("val"), prepared.split("test")

    xc, yc = val.tensors[0][:cfg.n_choose], val.tensors[1][:cfg.n_choose]
    right, wrong = choice_logits(robust_model, xc, yc, ecfg, cfg.seed)
    choices = [choose_nuts(right, wrong, b, cfg.s_grid, cfg.p_grid, cfg.c_grid) for b in cfg.betas]
    save_json([dataclasses.asdict(c) for c in choices], args.choice_out)
    points = front(core_model, robust_model, cfg, choices)

    jobs = {"test": (test, ecfg.n_points, args.out), "val": (val, ecfg.n_val_points, args.val_out)}
    sets = {}
    for split, (ds, n, _) in jobs.items():
        x, y = ds.tensors[0][:n], ds.tensors[1][:n]
        sets[split] = PointSet(x, y, torch.arange(len(y)))
    for split, df in mixing_records(points, sets, ecfg).items():
        out = jobs[split][2]
        save_csv(df, out)
        for (method, alpha), d in df.groupby(["method", "alpha"], sort=False):
            print(f"{method} alpha={alpha:.4f}: natural {accurate(d).mean():.3f}, robust accuracy at "
                  f"eps={ecfg.eps}: {(accurate(d) & robust(d, 1)).mean():.3f} -> {out}")


if __name__ == "__main__":
    stage.run(main)
