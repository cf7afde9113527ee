"""Benchmark: what each attack of the evaluate list costs in seconds, side by side in one run.

The list ``apgd-ce, apgd-t, fab-t, square`` (``evaluate_strong``'s budgets from params.yaml, or the
flags) runs on the same model and points as the pipeline runs it (evaluation/empirical.attack_list:
each attack on the points every earlier one left robust, at eps then 2 eps), ``--repeats`` times;
printed per attack: the median wall seconds, the ratio to APGD-CE's, the model evaluations per point
(the machine-independent cost reports/strength.md shows) and the points it broke beyond the earlier
attacks. Always exits 0 (it is a report).

    .venv/bin/python bench/bench_attacks.py --model models/base.pt            # after dvc repro
    .venv/bin/python bench/bench_attacks.py --model models/base.pt --n 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

import torch

from robust_abstain.analysis.records import attack_broke
from robust_abstain.attacks.registry import ATTACKS
from robust_abstain.data import load_prepared
from robust_abstain.evaluation.empirical import AttackCost, EvaluateConfig, attack_list, natural
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import load_params, section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/base.pt")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, help="test points (default: evaluate_strong.n_points)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EvaluateConfig.from_params(section(load_params(args.params), "evaluate_strong"), "evaluate_strong")
    n = args.n or cfg.n_points
    ds = load_prepared(args.data).split("test")
    x = ds.tensors[0][:n]
    model, _, _ = load_model(args.model)
    pred, _ = natural(model, x)
    runs = []
    for _ in range(args.repeats):
        cost = AttackCost()
        cols = attack_list(model, x, pred, cfg.eps, cfg.attacks, cfg.budget(), cost=cost)
        runs.append((cost, cols))
    cost, cols = runs[-1]
    base = statistics.median(r[0].seconds["apgd-ce"] for r in runs)
    print(f"{args.model}: {n} test points, eps {cfg.eps:g} and {2 * cfg.eps:g}, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'attack':8} {'seconds':>8} {'x APGD-CE':>9} {'evals/pt':>9} {'breaks':>6}")
    import pandas as pd
    df = pd.DataFrame({"pred": pred.numpy(), **{k: v.numpy() for k, v in cols.items()}})
    for name in cfg.attacks:
        sec = statistics.median(r[0].seconds[name] for r in runs)
        p = ATTACKS[name].prefix
        breaks = sum(int(attack_broke(df, p, s).sum()) for s in (1, 2)) if name != "apgd-ce" else "-"
        print(f"{name:8} {sec:8.2f} {sec / base:9.2f} {cost.evaluations[name] / n:9.1f} {breaks!s:>6}")


if __name__ == "__main__":
    main()
