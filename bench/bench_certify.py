"""Certification throughput of robust_abstain.evaluation.certify on the small CNN (random weights), side by side:

  plain       the model's forward alone on full batches of ``batch`` images (the ceiling)
  batched     Smooth.certify_points: one stream of noisy samples across all points, full batches,
              bincount counting (target: >= 0.9 x plain, in noisy samples/s)
  per-image   a one-image-at-a-time loop in the style of the reference implementation: per image,
              n0 draws then n draws, batches of at most ``batch`` that never mix images, counts
              accumulated in Python

Medians of ``--repeats`` runs, interleaved. Usage: python bench/bench_certify.py [--points 20 ...]"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from robust_abstain.evaluation.certify import Smooth
from robust_abstain.models.nets import build_model


def per_image_certify(model, x, n0, n, alpha, batch, sigma, num_classes):
    """The baseline: one image at a time, never mixing images in a batch, Python-side counting."""
    model.eval()
    out = []
    with torch.inference_mode():
        for img in x:
            def draw(num):
                counts = np.zeros(num_classes, dtype=np.int64)
                left = num
                while left > 0:
                    b = min(batch, left)
                    left -= b
                    reps = img.unsqueeze(0).expand(b, *img.shape)
                    preds = model(reps + sigma * torch.randn_like(reps)).argmax(1).tolist()
                    for p in preds:
                        counts[p] += 1
                return counts

            ca = int(draw(n0).argmax())
            k = int(draw(n)[ca])
            lo = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]
            out.append((ca, sigma * norm.ppf(lo)) if lo >= 0.5 else (-1, 0.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10, mean=[0.286], std=[0.353]).eval()
    x = torch.rand(a.points, 1, 28, 28)
    smooth = Smooth(model, 10, a.sigma)
    samples = a.points * (a.n0 + a.n)
    plain_batches = max(1, min(10, samples // a.batch))
    clean = torch.rand(a.batch, 1, 28, 28)

    def plain():
        with torch.inference_mode():
            for _ in range(plain_batches):
                model(clean).argmax(1)
        return plain_batches * a.batch

    def batched():
        smooth.certify_points(x, range(a.points), 0, a.n0, a.n, a.alpha, a.batch)
        return samples

    def per_image():
        per_image_certify(model, x, a.n0, a.n, a.alpha, a.batch, a.sigma, 10)
        return samples

    runs = {"plain forward": plain, "batched certify": batched, "per-image loop": per_image}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            m = fn()
            rates[name].append(m / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}

    print(f"small CNN 1x28x28 (random weights), {torch.get_num_threads()} threads, {a.points} points, "
          f"n0={a.n0}, n={a.n}, batch={a.batch}, median of {a.repeats}")
    print(f"{'method':<18}{'samples/s':>12}{'s/point':>10}{'vs plain':>10}")
    for k, r in med.items():
        per_point = (a.n0 + a.n) / r
        print(f"{k:<18}{r:>12,.0f}{per_point:>10.3f}{r / med['plain forward']:>10.2f}")
    print(f"throughput ratio batched / plain forward: {med['batched certify'] / med['plain forward']:.3f} "
          f"(target >= 0.9)")
    print(f"speed-up batched / per-image loop: {med['batched certify'] / med['per-image loop']:.2f}x")


if __name__ == "__main__":
    main()
