"""Stage certify_merge: one model's certified records from its shards (results of stage certify
with ``--shard``), checked to come from one run's settings and to cover every test point once."""
import argparse
from pathlib import Path

from robust_abstain import stage
from robust_abstain.io import save_csv
from robust_abstain.evaluation.shards import merge_shards, shard_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", required=True, help="folder with the shard files <S>.csv (+ .json)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = stage.params("certify")
    k = shard_count(p.get("shards"))
    df = merge_shards([Path(args.shards) / f"{s}.csv" for s in range(k)])
    save_csv(df, args.out)
    print(f"{k} shard(s), {len(df)} points -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
