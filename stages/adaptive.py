"""Stage adaptive: the end-to-end attack on H = S F_robust + (1 - S) F_core for one robust model, for
each selector the report composes it with: S_ERI, and S_SR at the tau chosen on validation records
(robust_abstain.analysis.choose, the same choice the report makes). See robust_abstain.evaluation.adaptive."""
import argparse

import pandas as pd
import torch

from robust_abstain import stage
from robust_abstain.evaluation.adaptive import AttackConfig, adaptive_records
from robust_abstain.evaluation.empirical import EvaluateConfig
from robust_abstain.analysis.choose import ReportParams, composed_specs
from robust_abstain.data import load_prepared
from robust_abstain.io import save_csv
from robust_abstain.analysis.records import align
from robust_abstain.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="the robust model F_robust")
    ap.add_argument("--core-model", default="models/core.pt")
    ap.add_argument("--records", required=True, help="F_robust's test records")
    ap.add_argument("--val-records", required=True, help="F_robust's validation records")
    ap.add_argument("--core-records", default="results/records/core.csv")
    ap.add_argument("--core-val-records", default="results/records/val/core.csv")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p, rp = stage.params("evaluate", "report")
    cfg = AttackConfig.from_evaluate(EvaluateConfig.from_params(p, "evaluate"))
    rdf, cdf = align(pd.read_csv(args.records), pd.read_csv(args.core_records), names=["robust", "core"])
    vr, vc = align(pd.read_csv(args.val_records), pd.read_csv(args.core_val_records),
                   names=["robust (val)", "core (val)"])
    rp = ReportParams.from_params(rp, "report")
    specs = composed_specs(vr, vc, rp.tau_grid, rp.max_nat_drop)
    robust_model, _, _ = load_model(args.model)
    core_model, _, _ = load_model(args.core_model)
    test = load_prepared(args.data).split("test")
    idx = torch.tensor(rdf["index"].to_numpy())
    x, y = test.tensors[0][idx], test.tensors[1][idx]
    df = adaptive_records(robust_model, core_model, rdf, cdf, specs, x, y, cfg)
    save_csv(df, args.out)
    for name, d in df.groupby("selector", sort=False):
        print(f"{args.model} + {name}: H fooled on {int(d.h_adv_wrong.sum())} of {len(d)} points")


if __name__ == "__main__":
    stage.run(main)
