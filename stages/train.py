"""Stage train: train a model from scratch as params section ROLE says (core, base, noise_base)."""
import argparse

from robust_abstain import stage
from robust_abstain.parallel import TRAIN_THREADS
from robust_abstain.data import load_prepared
from robust_abstain.live import epoch_logger
from robust_abstain.training import train_model
from robust_abstain.training import state_dir_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", help="params section, e.g. core or base")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live", default=None, help="dvclive directory for per-epoch metrics")
    args = ap.parse_args()
    p = stage.params(args.role)
    with epoch_logger(args.live) as log:
        train_model(p, load_prepared(args.data), args.out, state_dir_for(args.out), args.role, log=log)


if __name__ == "__main__":
    stage.run(main, threads=TRAIN_THREADS)
