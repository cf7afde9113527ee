"""Benchmark: our APGD-CE against the reference APGD of `pyautoattack` (Croce & Hein's code).

Both attacks run in the same process on the same model, the same points and the same labels, with
40 iterations, 1 restart, the CE loss and the Linf ball. Reported per label setting (the model's own
prediction F(x), which our evaluation attacks, and the true label y): robust accuracy of each
attack (the fraction of points whose prediction at the returned point is still the attacked label),
the difference ours - reference in points (target: ours <= reference + 0.5), the median wall time
over ``--repeats`` runs and the ratio ours / reference (target: <= 1.0).

Model: ``--model`` is a checkpoint saved by our pipeline (models/checkpoint.save_model). Without it
a small CNN is trained on 10k Fashion-MNIST points (1 epoch standard + a short PGD adversarial
training at eps 0.05, about a minute), so that robust accuracy is far from 0.

Always exits 0 (it is a report); prints PASS / FAIL per target.

    .venv/bin/python bench/bench_apgd.py                       # defaults: n=1000, eps=0.05
    .venv/bin/python bench/bench_apgd.py --model models/base.pt --n 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# On a busy 2-core machine OpenMP's default spin-waiting made small torch ops up to ~75x slower
# (measured); passive waiting keeps the timings about the attacks. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from robust_abstain.attacks.apgd import APGD
from robust_abstain.attacks.pgd import pgd
from robust_abstain.data import load_prepared, prepare
from robust_abstain.models.checkpoint import ModelSpec, load_model, save_model, to_fast_layout


def train_quick_model(data, seed: int, eps: float, adv_epochs: int, log=print
                      ) -> tuple[nn.Module, ModelSpec]:
    """A small CNN on the training points: 1 epoch standard, then ``adv_epochs`` of PGD-5
    adversarial training (loss = (CE(x) + CE(x_pgd)) / 2) at ``eps``."""
    torch.manual_seed(seed)
    x, y = data.split("train").tensors
    spec = ModelSpec("cnn", (1, 28, 28), 10, (0.286,), (0.353,))
    model = spec.build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()

    def epoch(adv_steps: int, bs: int = 200) -> None:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            b = perm[i:i + bs]
            xb, yb = x[b].contiguous(memory_format=torch.channels_last), y[b]
            if adv_steps:
                model.eval()
                xa = pgd(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, eps,
                         adv_steps, generator=g)
                model.train()
                loss = 0.5 * F.cross_entropy(model(xb), yb) + 0.5 * F.cross_entropy(model(xa), yb)
            else:
                model.train()
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch(0)
    log(f"  standard epoch done ({time.perf_counter() - t0:.1f} s)")
    for _ in range(adv_epochs):
        epoch(5)
    log(f"  adversarial training done ({time.perf_counter() - t0:.1f} s)")
    return model.eval(), spec


def load_data(args):
    if args.data:
        return load_prepared(args.data)
    return prepare("fashion_mnist", {"n_train": 10000, "n_test": max(args.n, 1000)}, args.seed)


def test_points(data, args) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.split("test").tensors
    return x[:args.n].contiguous(), y[:args.n]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
    return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


def run_ours(model, x, y, args):
    return APGD(model, norm="linf", eps=args.eps, steps=args.steps, restarts=1, objective="ce",
                seed=args.seed, batch_size=args.batch_size, device="cpu").perturb(x, y)


def run_reference(model, x, y, args):
    from pyautoattack.autopgd_base import APGDAttack
    ref = APGDAttack(predict=model, n_iter=args.steps, norm="Linf", n_restarts=1, eps=args.eps,
                     seed=args.seed, loss="ce", rho=0.75, device="cpu")
    return ref.perturb(x, y)


def compare(model, x, labels, name, args, log=print) -> dict:
    times = {"ours": [], "reference": []}
    rob = {}
    runners = {"ours": run_ours, "reference": run_reference}
    for r in range(args.repeats):
        order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]
        for which in order:
            t0 = time.perf_counter()
            x_adv = runners[which](model, x, labels, args)
            times[which].append(time.perf_counter() - t0)
            if not in_ball(x_adv, x, args.eps):
                log(f"  WARNING: {which} left the eps-ball or [0, 1]")
            rob[which] = (predict(model, x_adv) == labels).float().mean().item() * 100
        log(f"  [{name}] repeat {r + 1}: ours {times['ours'][-1]:.2f} s, reference "
            f"{times['reference'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"name": name, "rob_ours": rob["ours"], "rob_ref": rob["reference"],
            "diff": rob["ours"] - rob["reference"], "t_ours": med["ours"], "t_ref": med["reference"],
            "ratio": med["ours"] / med["reference"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint saved by our pipeline (default: train a small CNN)")
    ap.add_argument("--data", default=None, help="prepared dataset (.pt) for --model (default: Fashion-MNIST)")
    ap.add_argument("--save-model", default=None, help="save the quickly trained model here")
    ap.add_argument("--n", type=int, default=1000, help="test points")
    ap.add_argument("--eps", type=float, default=0.05, help="Linf radius (0.05 on Fashion-MNIST)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="our APGD batch size (default: all points at once, as the reference does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adv-epochs", type=int, default=1, help="PGD training epochs of the quick model")
    args = ap.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = args.n
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    data = load_data(args)
    if args.model and Path(args.model).is_file():
        model, spec, _ = load_model(args.model)
        log(f"model: {args.model} ({spec.arch})")
    else:
        if args.model:
            log(f"model: {args.model} not found")
        log("model: training a small CNN on Fashion-MNIST (10k points)")
        model, spec = train_quick_model(data, args.seed, args.eps, args.adv_epochs, log)
        if args.save_model:
            save_model(model, spec, args.save_model, {"bench": "bench_apgd quick model"})
    model = to_fast_layout(model, spec.input_shape).eval()
    for p in model.parameters():
        p.requires_grad_(True)  # as a trained model comes; neither attack may touch .grad
    x, y = test_points(data, args)
    pred = predict(model, x)
    log(f"{len(x)} points, natural accuracy {100 * (pred == y).float().mean():.1f} %, eps {args.eps}, "
        f"{args.steps} steps, 1 restart, APGD-CE Linf")

    rows = [compare(model, x, pred, "labels = F(x)", args, log),
            compare(model, x, y, "labels = y (true)", args, log)]

    log("")
    log("| labels | robust acc ours (%) | robust acc reference (%) | diff (points) | "
        "median time ours (s) | median time reference (s) | ratio ours/ref |")
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['name']} | {r['rob_ours']:.1f} | {r['rob_ref']:.1f} | {r['diff']:+.1f} | "
            f"{r['t_ours']:.2f} | {r['t_ref']:.2f} | {r['ratio']:.2f} |")
    log("")
    for r in rows:
        ok_s = r["diff"] <= 0.5
        ok_t = r["ratio"] <= 1.0
        log(f"{'PASS' if ok_s else 'FAIL'}  strength [{r['name']}]: ours - reference = "
            f"{r['diff']:+.1f} points (target <= +0.5)")
        log(f"{'PASS' if ok_t else 'FAIL'}  speed    [{r['name']}]: ours / reference = "
            f"{r['ratio']:.2f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a report never fails the caller
        print(f"bench_apgd: error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(0)
