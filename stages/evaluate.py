"""Stage evaluate: attack one model once (APGD-CE and APGD-conf at eps and 2 eps) on the test points
and write its per-sample records."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.data import load_prepared
from robust_abstain.evaluate import empirical_records
from robust_abstain.errors import ParamError
from robust_abstain.io import save_csv
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import choice, count, non_negative
from robust_abstain.train import resolve_device


def sr_scales(value, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or any(v not in (1, 2) for v in value):
        raise ParamError(f"{key} must be a list of scales from [1, 2] (empty: no APGD-conf), got {value!r}")
    return tuple(value)


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
    model.to(resolve_device(p.get("device", "auto"), f"{args.section}.device"))
    test = load_prepared(args.data).split("test")
    x, y = test.tensors[0][:n], test.tensors[1][:n]
    df = empirical_records(model, x, y, torch.arange(len(y)), eps, norm=norm,
                           steps=count(p.get("steps", 40), f"{args.section}.steps"),
                           restarts=count(p.get("restarts", 1), f"{args.section}.restarts"),
                           seed=count(p.get("seed", 0), f"{args.section}.seed", min=0),
                           batch_size=count(p.get("batch_size", 500), f"{args.section}.batch_size"),
                           sr_scales=sr_scales(p.get("sr_scales", [2]), f"{args.section}.sr_scales"))
    save_csv(df, args.out)
    acc = (df.pred == df.label).mean()
    rob = ((df.adv_pred_1x == df.pred) & (df.pred == df.label)).mean()
    print(f"{args.model}: natural {acc:.3f}, robust accuracy at eps={eps}: {rob:.3f} -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
