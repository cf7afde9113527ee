"""Stage selection_net: the learned selection network S_NET (ACE, Mueller et al. 2021) for one robust
model: label selection_net.n_train training points (F_robust accurate and robust on B_2eps under
APGD-CE), train the network adversarially, score the validation and test points of F_robust's
records (net_score, net_score_min), choose tau on the validation records (robust_abstain.analysis.choose,
as the report does) and attack H = S_NET F_robust + (1 - S_NET) F_core end to end at that tau.
See robust_abstain.evaluation.selection_net."""
import argparse

import pandas as pd

from robust_abstain import stage
from robust_abstain.analysis.choose import ReportParams, composed_specs
from robust_abstain.analysis.compose import composition
from robust_abstain.analysis.records import align
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.evaluation.adaptive import AttackConfig, adaptive_records
from robust_abstain.evaluation.empirical import EvaluateConfig
from robust_abstain.evaluation.selection_net import (SelectionNetConfig, net_records, selection_labels,
                                                     split_points, train_selector, train_subset)
from robust_abstain.io import save_csv
from robust_abstain.models.checkpoint import load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="the robust model F_robust")
    ap.add_argument("--records", required=True, help="F_robust's test records")
    ap.add_argument("--val-records", required=True, help="F_robust's validation records")
    ap.add_argument("--core-model", default="models/core.pt")
    ap.add_argument("--core-records", default="results/records/core.csv")
    ap.add_argument("--core-val-records", default="results/records/val/core.csv")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out-net", required=True, help="the selection network's checkpoint")
    ap.add_argument("--out", required=True, help="test records with net_score, net_score_min")
    ap.add_argument("--val-out", required=True, help="validation records with net_score, net_score_min")
    ap.add_argument("--adaptive-out", required=True, help="adaptive records of H with S_NET at the chosen tau")
    args = ap.parse_args()
    sp, ep, rp = stage.params("selection_net", "evaluate", "report")
    cfg = SelectionNetConfig.from_params(sp, "selection_net")
    ev = EvaluateConfig.from_params(ep, "evaluate")
    rp = ReportParams.from_params(rp, "report")
    attack_cfg = AttackConfig.from_evaluate(ev)
    rdf, cdf = align(pd.read_csv(args.records), pd.read_csv(args.core_records), names=["robust", "core"])
    vr, vc = align(pd.read_csv(args.val_records), pd.read_csv(args.core_val_records),
                   names=["robust (val)", "core (val)"])
    dev = resolve_device(cfg.device, "selection_net.device")
    robust_model, _, _ = load_model(args.model)
    prepared = load_prepared(args.data)

    # 1. labels on training points; 2. the network
    train = prepared.split("train")
    at = train_subset(len(train), cfg.n_train, cfg.seed)
    x_tr, y_tr = train.tensors[0][at], train.tensors[1][at]
    t = selection_labels(robust_model.to(dev), x_tr, y_tr, ev.eps, cfg, norm=ev.norm, batch_size=ev.batch_size)
    net, spec = train_selector(x_tr, t, cfg, ev.eps, prepared.mean, prepared.std, norm=ev.norm, device=dev)
    save_model(net, spec, args.out_net, meta={"robust_model": args.model, "n_train": len(t),
                                              "label_rate": float(t.mean())})
    print(f"{args.model}: selection labels (accurate and robust at 2 eps) on {t.mean():.3f} of {len(t)} "
          f"training points -> {args.out_net}")

    # 3. scores on the validation and test points of F_robust's records
    scored = {}
    for split, df, out in (("val", vr, args.val_out), ("test", rdf, args.out)):
        ds = prepared.split(split)
        x, _ = split_points(df, ds.tensors[0], ds.tensors[1], f"{split} records")
        scored[split] = net_records(df, net, x, ev.eps, cfg, norm=ev.norm, batch_size=ev.batch_size)
        save_csv(scored[split], out)

    # 4. tau on validation (as the report chooses it); the attack on H at that tau, on test
    (spec_net,) = [s for s in composed_specs(scored["val"], vc, rp.tau_grid, rp.max_nat_drop)
                   if s.kind == "NET"]
    test = prepared.split("test")
    x, y = split_points(rdf, test.tensors[0], test.tensors[1], "test records")
    robust_model, net = robust_model.cpu(), net.cpu()
    core_model, _, _ = load_model(args.core_model)
    adv = adaptive_records(robust_model, core_model, scored["test"], cdf, [spec_net], x, y, attack_cfg,
                           selector_net=net)
    save_csv(adv, args.adaptive_out)
    o = composition(scored["test"], cdf, spec_net.selection(scored["test"]), adv)
    print(f"{args.model} + {spec_net.name} (tau chosen on validation), test: natural {o.nat_acc:.3f} "
          f"(core {o.core_nat_acc:.3f}), robust accuracy {o.rob_acc:.3f} (sound {o.rob_acc_sound:.3f}, "
          f"core {o.core_rob_acc:.3f}); H fooled on {o.n_fooled} of {o.n} points")


if __name__ == "__main__":
    stage.run(main)
