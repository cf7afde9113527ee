"""Stage prepare: build the dataset named in params `data` and save train/val/test tensors."""
import argparse

from robust_abstain import stage
from robust_abstain.data import DataConfig, save_prepared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/prepared.pt")
    args = ap.parse_args()
    cfg = DataConfig.from_params(stage.params("data"), "data")
    prepared = cfg.prepare()
    save_prepared(prepared, args.out)
    print(f"{cfg.dataset}: train {tuple(prepared.x_train.shape)}, val {tuple(prepared.x_val.shape)}, "
          f"test {tuple(prepared.x_test.shape)} -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
