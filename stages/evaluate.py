"""Stage evaluate: attack one model once (the section's attack list, APGD-CE first, at eps and 2 eps,
and APGD-conf at sr_scales) on the test points, and the same on validation points (from the training
split; every choice downstream is made on them), and write the per-sample records of each.

With --strong-out, also the stronger attacks of ``evaluate_strong`` (APGD-T, FAB-T, Square) on its
first n_points test points, after the APGD-CE verdicts of these records (not attacked again), and
with --cost-out what each attack cost (model evaluations; JSON): reports/strength.md.
Pieces of points run in worker processes (robust_abstain.parallel); the records do not depend on
how many."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.analysis.records import accurate, robust
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.empirical import (REUSED, EvaluateConfig, Evaluated, PointSet,
                                                 check_same_threat_model, records_in_pieces)
from robust_abstain.io import save_csv, save_json
from robust_abstain.models.checkpoint import load_model


def _summary(df, eps: float) -> str:
    rob_acc = (accurate(df) & robust(df, 1)).mean()
    return f"natural {accurate(df).mean():.3f}, robust accuracy at eps={eps}: {rob_acc:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="test records")
    ap.add_argument("--val-out", help="validation records (evaluate.n_val_points of the val split)")
    ap.add_argument("--section", default="evaluate", help="params section (threat model)")
    ap.add_argument("--strong-out", help="records of the evaluate_strong attacks on its test points")
    ap.add_argument("--cost-out", help="JSON: model evaluations of each attack (with --strong-out)")
    args = ap.parse_args()
    sec = args.section
    cfg = EvaluateConfig.from_params(stage.params(sec), sec)
    strong = None
    if args.strong_out:
        strong = EvaluateConfig.from_params(stage.params("evaluate_strong"), "evaluate_strong")
        check_same_threat_model(strong, cfg, ev_key=sec)
    elif args.cost_out:
        raise ParamError("--cost-out needs --strong-out (the cost of the stronger attacks)")
    jobs = {"test": (cfg.n_points, args.out)}
    if args.val_out:
        if cfg.n_val_points is None:
            raise ParamError(f"{sec} lacks ['n_val_points'], needed for --val-out")
        jobs["val"] = (cfg.n_val_points, args.val_out)
    model, _, _ = load_model(args.model)
    model.to(resolve_device(cfg.device, f"{sec}.device"))
    prepared = load_prepared(args.data)
    sets = {}
    for split, (n_split, _) in jobs.items():
        x, y = prepared.split(split).tensors
        sets[split] = PointSet(x[:n_split], y[:n_split], torch.arange(min(n_split, len(y))))
    done = records_in_pieces(model, sets, cfg.eps, cfg.attacks, cfg.budget(), cfg.sr_scales,
                             desc=f"{sec} {args.model}")
    for split, ev in done.items():
        save_csv(ev.records, jobs[split][1])
        print(f"{args.model} ({split}): {_summary(ev.records, cfg.eps)} -> {jobs[split][1]}; attack CPU seconds "
              + ", ".join(f"{k} {v:.1f}" for k, v in ev.cost.seconds.items()))
    if strong is not None:
        stronger(model, strong, sets["test"], done["test"], args)


def stronger(model, strong: EvaluateConfig, test_points: PointSet, test: Evaluated, args) -> None:
    """The stronger list on the first ``strong.n_points`` test points, after the records' own APGD-CE
    verdicts (:data:`REUSED`, not attacked again); its records, and with --cost-out what each attack
    cost: APGD-CE's over all the test points it attacked, the others' over the subset."""
    n = min(strong.n_points, len(test.records))
    known = {c: torch.from_numpy(test.records[c].to_numpy()[:n].copy()) for c in REUSED}
    ps = test_points
    (df, cost), = records_in_pieces(model, {"test": PointSet(ps.x[:n], ps.y[:n], ps.index[:n], known)},
                                    strong.eps, strong.attacks, strong.budget(), strong.sr_scales,
                                    desc=f"evaluate_strong {args.model}").values()
    save_csv(df, args.strong_out)
    if args.cost_out:
        points = {a: len(test.records) if a == "apgd-ce" else n for a in strong.attacks}
        evals = {a: (test.cost if a == "apgd-ce" else cost).evaluations.get(a, 0) for a in strong.attacks}
        save_json({"points": points, "evaluations": evals}, args.cost_out)
    print(f"{args.model} (stronger attacks, first {n} test points): {_summary(df, strong.eps)} -> {args.strong_out}")


if __name__ == "__main__":
    stage.run(main)
