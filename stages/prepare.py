"""Stage prepare: build the dataset named in params `data` and save train/val/test tensors."""
import argparse

from robust_abstain import stage
from robust_abstain.data import prepare, save_prepared
from robust_abstain.params import count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/prepared.pt")
    args = ap.parse_args()
    p = stage.params("data")
    name = p.get("dataset")
    prepared = prepare(name, p.get(name) or {}, count(p.get("seed", 0), "data.seed", min=0))
    save_prepared(prepared, args.out)
    print(f"{name}: train {tuple(prepared.x_train.shape)}, val {tuple(prepared.x_val.shape)}, "
          f"test {tuple(prepared.x_test.shape)} -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
