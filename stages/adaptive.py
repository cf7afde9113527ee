"""Stage adaptive: the adaptive end-to-end attack on H = S_ERI F_robust + (1 - S_ERI) F_core for one
robust model, where the paper's evaluation rule may over-count (see robust_abstain.adaptive)."""
import argparse

import pandas as pd
import torch

from robust_abstain import stage
from robust_abstain.adaptive import adaptive_records
from robust_abstain.data import load_prepared
from robust_abstain.io import save_csv
from robust_abstain.metrics import align
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import choice, count, non_negative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="the robust model F_robust")
    ap.add_argument("--records", required=True, help="its per-sample records")
    ap.add_argument("--core-records", default="results/records/core.csv")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = stage.params("evaluate")
    eps = non_negative(p.get("eps"), "evaluate.eps")
    rdf, cdf = align(pd.read_csv(args.records), pd.read_csv(args.core_records), names=["robust", "core"])
    model, _, _ = load_model(args.model)
    test = load_prepared(args.data).split("test")
    idx = torch.as_tensor(rdf["index"].to_numpy())
    x, y = test.tensors[0][idx], test.tensors[1][idx]
    df = adaptive_records(model, rdf, cdf, x, y, eps,
                          norm=choice(p.get("norm", "linf"), "evaluate.norm", ["linf", "l2"]),
                          steps=count(p.get("steps", 40), "evaluate.steps"),
                          seed=count(p.get("seed", 0), "evaluate.seed", min=0),
                          batch_size=count(p.get("batch_size", 500), "evaluate.batch_size"))
    save_csv(df, args.out)
    print(f"{args.model}: H fooled through the selector on {int(df.h_adv_wrong.sum())} of {len(df)} points")


if __name__ == "__main__":
    stage.run(main)
