"""Stage certify: Cohen et al.'s CERTIFY for the smoothed version of one model on the test points,
or on one shard of them (``--shard S`` of the ``certify.shards`` list: the points j with
j % len(shards) == S).

Per-point results are appended to a partial file as they come, so a killed run resumes where it
stopped and ends with the same records as an uninterrupted one. Noise is seeded per point, so the
merged shards (stage certify_merge) equal the unsharded records byte for byte."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.data import load_prepared
from robust_abstain.device import resolve_device
from robust_abstain.evaluation.certify import CertifyConfig, certify_dataset, certify_settings
from robust_abstain.evaluation.shards import shard_count, shard_meta, shard_positions
from robust_abstain.evaluation.smoothing import Smooth
from robust_abstain.io import save_json
from robust_abstain.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True, help="records CSV; a shard also writes <out>.json")
    ap.add_argument("--shard", type=int, default=None, help="which shard of certify.shards to run")
    args = ap.parse_args()
    cfg = CertifyConfig.from_params(stage.params("certify"), "certify")
    shard, num_shards = (args.shard, shard_count(cfg.shards)) if args.shard is not None else (0, 1)
    model, spec, _ = load_model(args.model)
    dev = resolve_device(cfg.device, "certify.device")
    model.to(dev)
    test = load_prepared(args.data).split("test")
    n_points = min(cfg.n_points, len(test))
    pos = torch.tensor(shard_positions(n_points, shard, num_shards), dtype=torch.long)
    smooth = Smooth(model, spec.num_classes, cfg.sigma)
    df = certify_dataset(smooth, test.tensors[0][pos].to(dev), test.tensors[1][pos], pos, args.out,
                         n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, batch_size=cfg.batch_size, seed=cfg.seed)
    if args.shard is not None:
        settings = certify_settings(smooth, cfg.n0, cfg.n, cfg.alpha, cfg.seed)
        save_json(shard_meta(settings, shard, num_shards, n_points), args.out + ".json")
    part = f" (shard {shard} of {num_shards})" if args.shard is not None else ""
    print(f"{args.model}{part}: smoothed accuracy {(df.smooth_pred == df.label).mean():.3f}, "
          f"certified (any radius) {(df.cert_pred == df.label).mean():.3f} -> {args.out}")

if __name__ == "__main__":
    stage.run(main)
