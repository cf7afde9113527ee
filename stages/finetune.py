"""Stage finetune: fine-tune a base model with one (loss, beta) of a sweep, or the headline loss.

The sweep entry comes from params section SWEEP (key KEY); with --headline the params section
HEADLINE (e.g. `loss`, changed by `dvc exp run -S loss.beta=0.5`) gives name and beta. --seed
replaces the section's train.seed (the `seeds` axis of the headline run)."""
import argparse

from robust_abstain import stage
from robust_abstain.data import load_prepared
from robust_abstain.live import epoch_logger
from robust_abstain.params import count
from robust_abstain.pipeline import sweep_entry, train_model
from robust_abstain.train import state_dir_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--section", default="finetune", help="fine-tuning params section")
    ap.add_argument("--sweep", default="sweep", help="sweep params section")
    ap.add_argument("--key", help="sweep entry")
    ap.add_argument("--headline", help="params section of the headline loss (instead of --key)")
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live", default=None)
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: SECTION.train.seed)")
    args = ap.parse_args()
    if args.headline:
        p, entry = stage.params(args.section, args.headline)
    else:
        p, sweep = stage.params(args.section, args.sweep)
        entry = sweep_entry(sweep, args.key)
    override = {"name": entry["name"], "beta": entry["beta"]}
    if args.seed is not None:
        p = {**p, "train": {**(p.get("train") or {}), "seed": count(args.seed, "--seed", min=0)}}
    with epoch_logger(args.live) as log:
        train_model(p, load_prepared(args.data), args.out, state_dir_for(args.out), args.section,
                    init=args.init, loss_override=override, log=log)


if __name__ == "__main__":
    stage.run(main)
