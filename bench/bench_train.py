"""Cost of fine-tuning losses, measured side by side in one run on the same model and data:

* ERA epoch / TRADES epoch (paper variant: two inner attacks; shared variant: one),
* TRADES epoch / ((PGD steps + 2) plain CE training steps): TRADES's floor is one gradient per PGD
  step plus the clean and adversarial forward/backward passes.

With ``--augment``, instead, whole epochs through :func:`robust_abstain.training.fit` on CIFAR-shaped
data (uint8 3x32x32 images, as CIFAR is stored, converted to [0, 1] as the pipeline does), TRADES
fine-tuning of a small CNN:

* AutoAugment with ``workers=1`` / ``workers=0``: augmentation in a DataLoader worker, overlapping
  with the model step, against augmentation in the training process (same weights either way);
* ``amp="bf16"`` / fp32 epoch (no augmentation): mixed precision of the training loss on this CPU.

Each fit is one epoch with a 20-point validation split, so its time is the epoch's (plus the
DataLoader's worker start-up, which a real epoch pays too).

Prints medians over --repeats. Usage: python bench/bench_train.py [--n 2000] [--repeats 3] [--augment]
"""
import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while waiting slow small ops down a lot whenever another process (here:
# a DataLoader worker) shares the cores; must be set before torch loads (see robust_abstain/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from robust_abstain.losses import LossConfig, get_loss  # noqa: E402
from robust_abstain.models.checkpoint import ModelSpec  # noqa: E402
from robust_abstain.training import TrainConfig, fit  # noqa: E402


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


def fit_epoch_time(loss_cfg: LossConfig, train: TensorDataset, val: TensorDataset, batch_size: int,
                   augment: str | None, workers: int, amp: str, width: int, seed: int = 0) -> float:
    """Wall time of one epoch of :func:`fit` (fresh state file, output silenced)."""
    torch.manual_seed(seed)
    model = ModelSpec("cnn", (3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), width).build()
    cfg = TrainConfig(epochs=1, lr=1e-4, batch_size=batch_size, select="last", seed=seed,
                      augment=augment, workers=workers, amp=amp, device="cpu")
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        fit(model, loss_cfg, train, val, cfg, Path(d) / "state.pt", desc="bench")
        return time.perf_counter() - t


def augment_bench(args) -> None:
    g = torch.Generator().manual_seed(0)
    n = args.n + 20
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    xf = x.float().div_(255)  # as Prepared.split gives it
    train, val = TensorDataset(xf[:args.n], y[:args.n]), TensorDataset(xf[args.n:], y[args.n:])
    loss = LossConfig("trades", beta=6.0, eps=2 / 255, pgd_steps=args.steps)
    cases = {"autoaugment, workers=0": ("autoaugment", 0, "none"),
             "autoaugment, workers=1": ("autoaugment", 1, "none"),
             "no augment, fp32": (None, 0, "none"),
             "no augment, amp bf16": (None, 0, "bf16")}
    warm = TensorDataset(xf[:args.batch_size], y[:args.batch_size])
    for aug, workers, amp in cases.values():  # untimed: imports, first-call and allocator warm-up
        fit_epoch_time(loss, warm, val, args.batch_size, aug, workers, amp, args.width)
    times = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for k, (aug, workers, amp) in cases.items():
            times[k].append(fit_epoch_time(loss, train, val, args.batch_size, aug, workers, amp, args.width))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"fit(): small CNN (width {args.width}) on uint8 3x32x32 data, {args.n} samples, batch "
          f"{args.batch_size}, TRADES {args.steps}-step PGD at eps 2/255, {torch.get_num_threads()} "
          f"threads, {os.cpu_count()} cores, median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:<24} epoch {v:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times[k])})")
    print(f"AutoAugment workers=1 / workers=0 epoch: "
          f"{med['autoaugment, workers=1'] / med['autoaugment, workers=0']:.2f}")
    print(f"AutoAugment (workers=0) / no augment epoch: "
          f"{med['autoaugment, workers=0'] / med['no augment, fp32']:.2f}")
    print(f"amp bf16 / fp32 epoch (no augment):       "
          f"{med['no augment, amp bf16'] / med['no augment, fp32']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--augment", action="store_true",
                    help="fit() epochs on CIFAR-shaped data: AutoAugment workers 1 vs 0, amp bf16 vs fp32")
    ap.add_argument("--width", type=int, default=16, help="CNN width for --augment")
    args = ap.parse_args()
    if args.augment:
        augment_bench(args)
        return
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
