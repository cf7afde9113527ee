"""Stage certify: Cohen et al.'s CERTIFY for the smoothed version of one model on the test points.

Per-point results are appended to a partial file as they come, so a killed run resumes where it
stopped and ends with the same records as an uninterrupted one."""
import argparse

import torch

from robust_abstain import stage
from robust_abstain.certify import Smooth, certify_dataset
from robust_abstain.data import load_prepared
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import count, positive, probability
from robust_abstain.train import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = stage.params("certify")
    sigma = positive(p.get("sigma"), "certify.sigma")
    n_points = count(p.get("n_points", 500), "certify.n_points")
    model, spec, _ = load_model(args.model)
    dev = resolve_device(p.get("device", "auto"), "certify.device")
    model.to(dev)
    test = load_prepared(args.data).split("test")
    x, y = test.tensors[0][:n_points].to(dev), test.tensors[1][:n_points]
    df = certify_dataset(Smooth(model, spec.num_classes, sigma), x, y, torch.arange(len(y)), args.out,
                         n0=count(p.get("n0", 100), "certify.n0"), n=count(p.get("n", 100000), "certify.n"),
                         alpha=probability(p.get("alpha", 0.001), "certify.alpha"),
                         batch_size=count(p.get("batch_size", 1000), "certify.batch_size"),
                         seed=count(p.get("seed", 0), "certify.seed", min=0))
    print(f"{args.model}: smoothed accuracy {(df.smooth_pred == df.label).mean():.3f}, "
          f"certified (any radius) {((df.cert_pred == df.label)).mean():.3f} -> {args.out}")


if __name__ == "__main__":
    stage.run(main)
