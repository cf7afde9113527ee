"""Benchmark at the paper's scale: RobustBench's WideResNet-28-10 on CIFAR-10-shaped inputs, meant
for a GPU machine. Measured side by side in one run, on the same model and data:

1. Fine-tuning step time (one optimisation step of :func:`robust_abstain.training.loop.train_step`, the very
   step :func:`~robust_abstain.training.loop.fit` takes) of ERA (paper variant: two inner attacks; shared
   variant: one) against TRADES, batch ``--batch`` (200 on GPU), ``--steps``-step PGD at
   ``--eps`` (10 steps at 2/255, the paper's CIFAR fine-tuning); with ``--amp bf16|fp16`` every
   loss is also timed under mixed precision, and the amp / fp32 ratio is printed.
2. APGD-CE throughput (images/s) of our APGD (:class:`robust_abstain.attacks.apgd.APGD`) against
   the reference APGD of pyautoattack (Croce & Hein's code, ``APGDAttack``), ``--apgd-steps``
   (40) iterations, 1 restart, Linf ``--apgd-eps`` (8/255), the model's own prediction F(x) as the
   label (what our evaluation attacks), all ``--apgd-n`` points in one batch for both. Attacks
   always run in fp32, as in the pipeline. The robust accuracy of each is printed as a sanity
   check: ours returns a point as soon as it is misclassified (the sample leaves the batch), so
   on a non-robust model, e.g. the randomly initialised default, it is much faster than the
   reference; use ``--zoo Carmon2019Unlabeled`` (a robust WRN-28-10 checkpoint under
   ``--model-dir``, no download attempted if present) and ``--data`` for representative numbers.

Timings are medians over ``--repeats`` (cases interleaved, after one untimed warm-up each), with
``torch.cuda.synchronize`` around every timed region on CUDA. Randomness is seeded (``--seed``).

    .venv/bin/python bench/bench_wrn.py                              # GPU: WRN-28-10, batch 200
    .venv/bin/python bench/bench_wrn.py --amp bf16 --repeats 5
    .venv/bin/python bench/bench_wrn.py --device cpu --depth 10 --width 1 --batch 8 --apgd-n 8 \\
        --repeats 1                                                  # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

# OpenMP threads that spin while waiting slow small ops down a lot whenever another process shares
# the cores; must be set before torch loads (see robust_abstain/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from robust_abstain.attacks.apgd import APGD  # noqa: E402
from robust_abstain.losses import LossConfig, get_loss  # noqa: E402
from robust_abstain.device import resolve_device  # noqa: E402
from robust_abstain.training import AMP, train_step  # noqa: E402


def build_wrn(depth: int, width: int, num_classes: int = 10) -> nn.Module:
    """RobustBench's WideResNet (depth 28, widen factor 10 is WRN-28-10); randomly initialised
    from torch's global RNG (seed it first)."""
    from robust_abstain.compat import import_robustbench
    import_robustbench()  # registers the ``autoattack`` alias robustbench's package import needs
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    return WideResNet(depth=depth, num_classes=num_classes, widen_factor=width)


def load_model(args) -> tuple[nn.Module, str]:
    torch.manual_seed(args.seed)
    if args.zoo:
        from robust_abstain.compat import import_robustbench
        import_robustbench()
        from robust_abstain.models.zoo import load_zoo_model
        return load_zoo_model(args.zoo, "cifar10", args.threat_model, args.model_dir), \
            f"RobustBench {args.zoo} ({args.threat_model})"
    return build_wrn(args.depth, args.width), f"WideResNet-{args.depth}-{args.width} (random init)"


def load_points(args, n: int, split: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of a prepared dataset's split (``--data``), else seeded uniform noise images."""
    if args.data:
        from robust_abstain.data import load_prepared
        x, y = load_prepared(args.data).split(split).tensors
        if len(x) < n:
            raise SystemExit(f"{args.data} has only {len(x)} {split} points, need {n}")
        return x[:n].contiguous(), y[:n]
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def bench_training(model: nn.Module, args, device: torch.device, log=print) -> None:
    g = torch.Generator().manual_seed(args.seed)
    x, y = load_points(args, args.batch, "train", g)
    x, y = x.to(device), y.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    losses = {"trades": LossConfig("trades", beta=6.0, eps=args.eps, pgd_steps=args.steps),
              "era (paper)": LossConfig("era", beta=1.0, eps=args.eps, pgd_steps=args.steps),
              "era (shared)": LossConfig("era", beta=1.0, eps=args.eps, pgd_steps=args.steps,
                                         era_variant="shared")}
    precisions = ["none"] if args.amp == "none" else ["none", args.amp]
    cases = [(name, amp) for amp in precisions for name in losses]
    # the weights change with every step; each case starts from the same initial weights
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def run(name: str, amp: str) -> float:
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        gen = torch.Generator().manual_seed(args.seed) if device.type == "cpu" else None
        fn, cfg = get_loss(losses[name].name), losses[name]

        def steps() -> None:
            for _ in range(args.iters):
                train_step(model, opt, fn, cfg, x, y, gen, AMP[amp], scaler)
        return timed(steps, device)[0] / args.iters

    for case in cases:  # untimed warm-up: kernels, allocator
        run(*case)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    for r in range(args.repeats):  # interleaved, so load changes hit every case alike
        for case in cases:
            times[case].append(run(*case))
        log(f"  [train] repeat {r + 1}: " + ", ".join(
            f"{n}{'' if a == 'none' else ' ' + a} {times[(n, a)][-1]:.3f} s" for n, a in cases))
    med = {c: statistics.median(v) for c, v in times.items()}
    log(f"\nFine-tuning step, batch {args.batch}, {args.steps}-step PGD at eps {args.eps:.5f}, "
        f"median of {args.repeats} x {args.iters} steps")
    log("| loss | precision | step (s) | images/s |")
    log("|---|---|---|---|")
    for (n, a), v in med.items():
        log(f"| {n} | {'fp32' if a == 'none' else a} | {v:.3f} | {args.batch / v:.1f} |")
    for a in precisions:
        p = "fp32" if a == "none" else a
        log(f"ERA (paper) / TRADES step [{p}]:  {med[('era (paper)', a)] / med[('trades', a)]:.2f}")
        log(f"ERA (shared) / TRADES step [{p}]: {med[('era (shared)', a)] / med[('trades', a)]:.2f}")
    if args.amp != "none":
        for n in losses:
            log(f"{n} step {args.amp} / fp32: {med[(n, args.amp)] / med[(n, 'none')]:.2f}")


def bench_apgd(model: nn.Module, args, device: torch.device, log=print) -> None:
    from pyautoattack.autopgd_base import APGDAttack

    g = torch.Generator().manual_seed(args.seed + 1)
    x, _ = load_points(args, args.apgd_n, "test", g)
    x = x.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # as a trained model comes; neither attack may touch .grad
    with torch.no_grad():
        pred = model(x).argmax(1)

    def ours() -> torch.Tensor:
        return APGD(model, norm="linf", eps=args.apgd_eps, steps=args.apgd_steps, restarts=1,
                    objective="ce", seed=args.seed, batch_size=len(x), device=device).perturb(x, pred)

    def reference() -> torch.Tensor:
        ref = APGDAttack(predict=model, n_iter=args.apgd_steps, norm="Linf", n_restarts=1,
                         eps=args.apgd_eps, seed=args.seed, loss="ce", rho=0.75, device=device)
        return ref.perturb(x, pred)

    runners = {"ours": ours, "reference": reference}
    for fn in runners.values():  # untimed warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    rob: dict[str, float] = {}
    for r in range(args.repeats):
        for k in (["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]):
            t, x_adv = timed(runners[k], device)
            times[k].append(t)
            with torch.no_grad():
                rob[k] = (model(x_adv).argmax(1) == pred).float().mean().item() * 100
        log(f"  [apgd] repeat {r + 1}: ours {times['ours'][-1]:.3f} s, "
            f"reference {times['reference'][-1]:.3f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    log(f"\nAPGD-CE, {len(x)} points, {args.apgd_steps} steps, 1 restart, Linf eps {args.apgd_eps:.5f}, "
        f"labels F(x), fp32, median of {args.repeats}")
    log("| attack | time (s) | images/s | robust acc w.r.t. F(x) (%) |")
    log("|---|---|---|---|")
    for k, v in med.items():
        log(f"| {k} | {v:.3f} | {len(x) / v:.1f} | {rob[k]:.1f} |")
    log(f"APGD throughput ours / reference: {med['reference'] / med['ours']:.2f}x "
        f"(time ratio ours / reference {med['ours'] / med['reference']:.2f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda[:N]")
    ap.add_argument("--depth", type=int, default=28)
    ap.add_argument("--width", type=int, default=10, help="widen factor")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 200 on GPU, 8 on CPU)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the training losses")
    ap.add_argument("--eps", type=float, default=2 / 255, help="training Linf eps")
    ap.add_argument("--amp", choices=list(AMP), default="none",
                    help="also time the training step under this autocast dtype")
    ap.add_argument("--iters", type=int, default=2, help="training steps per timing")
    ap.add_argument("--apgd-n", type=int, default=None, help="APGD points (default 500 on GPU, 8 on CPU)")
    ap.add_argument("--apgd-steps", type=int, default=40)
    ap.add_argument("--apgd-eps", type=float, default=8 / 255)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    ap.add_argument("--zoo", default=None, help="a RobustBench CIFAR-10 model instead of a random WRN")
    ap.add_argument("--threat-model", default="Linf")
    ap.add_argument("--model-dir", default="models/zoo")
    ap.add_argument("--data", default=None, help="prepared CIFAR-10 dataset (.pt) instead of noise images")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-apgd", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (200 if gpu else 8)
    args.apgd_n = args.apgd_n or (500 if gpu else 8)
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    model, what = load_model(args)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    log(f"torch {torch.__version__}, device {device} [{name}], model {what}, {n_params / 1e6:.1f} M params")
    if not args.skip_train:
        bench_training(model, args, device, log)
    if not args.skip_apgd:
        bench_apgd(model, args, device, log)


if __name__ == "__main__":
    main()
