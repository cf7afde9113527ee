"""Cost of fine-tuning losses, measured side by side in one run on the same model and data:

* ERA epoch / TRADES epoch (paper variant: two inner attacks; shared variant: one),
* TRADES epoch / ((PGD steps + 2) plain CE training steps): TRADES's floor is one gradient per PGD
  step plus the clean and adversarial forward/backward passes.

Prints medians over --repeats. Usage: python bench/bench_train.py [--n 2000] [--repeats 3]
"""
import argparse
import statistics
import time

import torch

from robust_abstain.losses import LossConfig, get_loss
from robust_abstain.models.checkpoint import ModelSpec


def epoch_time(loss_cfg: LossConfig, x, y, batch_size: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = ModelSpec("cnn", (1, 28, 28), 10, (0.286,), (0.353,), 16).build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fn, g = get_loss(loss_cfg.name), torch.Generator().manual_seed(seed)
    model.train()
    t = time.perf_counter()
    for i in range(0, len(y), batch_size):
        loss, _ = fn(model, x[i:i + batch_size], y[i:i + batch_size], loss_cfg, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.n, 1, 28, 28, generator=g), torch.randint(0, 10, (args.n,), generator=g)
    cfgs = {"ce": LossConfig("ce"),
            "trades": LossConfig("trades", beta=6.0, eps=args.eps, pgd_steps=args.steps),
            "era (paper)": LossConfig("era", beta=1.0, eps=args.eps, pgd_steps=args.steps),
            "era (shared)": LossConfig("era", beta=1.0, eps=args.eps, pgd_steps=args.steps, era_variant="shared")}
    times = {k: [] for k in cfgs}
    for _ in range(args.repeats):  # interleaved, so load changes hit every loss alike
        for k, c in cfgs.items():
            times[k].append(epoch_time(c, x, y, args.batch_size))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"small CNN (width 16, channels_last), {args.n} samples, batch {args.batch_size}, "
          f"{args.steps}-step PGD, {torch.get_num_threads()} threads, median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:<14} epoch {v:7.2f} s")
    floor = med["ce"] * (args.steps + 2)
    print(f"ERA (paper) / TRADES epoch:           {med['era (paper)'] / med['trades']:.2f}")
    print(f"ERA (shared) / TRADES epoch:          {med['era (shared)'] / med['trades']:.2f}")
    print(f"TRADES epoch / ((steps + 2) CE epochs): {med['trades'] / floor:.2f}")


if __name__ == "__main__":
    main()
