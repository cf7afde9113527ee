"""Stage finetune: fine-tune a base model as params section SECTION says, with the loss (name and
beta) of the params entry LOSS: a sweep entry (``sweep.era-1``, ``cert_sweep.cra-4``) or a headline
section (``loss``, changed by ``dvc exp run -S loss.beta=0.5``; ``cert_loss``). --seed replaces
SECTION.train.seed (``default``: keep it), for the seed spread of the headline run."""
import argparse

from robust_abstain import stage
from robust_abstain.parallel import TRAIN_THREADS
from robust_abstain.data import load_prepared
from robust_abstain.live import epoch_logger
from robust_abstain.params import count
from robust_abstain.training import state_dir_for, sweep_entry, train_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--section", default="finetune", help="fine-tuning params section")
    ap.add_argument("--loss", required=True, help="params entry of the loss: SECTION or SWEEP.KEY")
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live", default=None)
    ap.add_argument("--seed", default="default", help="training seed (default: SECTION.train.seed)")
    args = ap.parse_args()
    sweep_name, _, key = args.loss.partition(".")
    p, entry = stage.params(args.section, sweep_name)
    if key:
        entry = sweep_entry(entry, key)
    override = {k: v for k, v in entry.items() if k != "init"}   # init: where it starts (dvc.yaml)
    if args.seed != "default":
        seed = count(int(args.seed) if args.seed.isdigit() else args.seed, "--seed", min=0)
        p = {**p, "train": {**(p.get("train") or {}), "seed": seed}}
    with epoch_logger(args.live) as log:
        train_model(p, load_prepared(args.data), args.out, state_dir_for(args.out), args.section,
                    init=args.init, loss_override=override, log=log)


if __name__ == "__main__":
    stage.run(main, threads=TRAIN_THREADS)
