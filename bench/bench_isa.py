"""Does pinning the CPU instruction set make results bitwise identical across CPUs, and what does it cost?

ATen (``ATEN_CPU_CAPABILITY``), oneDNN (``DNNL_MAX_CPU_ISA``) and MKL (``MKL_CBWR``) each pick
their kernels by the CPU's instruction set, so a machine with another ISA may sum in another order
and get other floats. This bench runs one small workload of the pipeline, each time in a fresh
subprocess (the variables are read at the first kernel call; the subprocess sets exactly its
setting's values, undoing any default that ``robust_abstain`` sets on import):

* train: ``--ce-steps`` cross-entropy steps (as the ``core`` stage), then ``--steps`` TRADES steps
  (eq. (5), PGD inner maximisation, as the ``base`` stage: eps 0.1, 7 PGD steps), Adam at lr 1e-3,
  of the width-16 small CNN (channels_last, as built by ModelSpec) on seeded 1x28x28 data, batch 200;
* eval: natural logits on ``--n-eval`` seeded points, then APGD-CE at eps 0.05 against F(x)
  (as the evaluate stage), giving the adversarial prediction and p_y at the returned point.

Each run reports sha256 prefixes of the final weights, the logits and the APGD outputs, the time of
the work (wall and process CPU time, import excluded) and of the imports. Settings run interleaved
(order reversed every other repetition) so load changes on a shared machine hit each alike; the
``avx512`` setting selects the same kernels as ``unset`` here, so its ratio shows the noise. A
probe subprocess per setting checks that each variable took effect:
``torch.backends.cpu.get_cpu_capability()`` for ATen, the ISA line and convolution implementation
from ``ONEDNN_VERBOSE`` for oneDNN, the ``CNR:`` field of ``MKL_VERBOSE`` for MKL. Prints tables
and a verdict; always exits 0 (it is a report).

    .venv/bin/python bench/bench_isa.py                  # 5 repetitions, ~5 minutes on 2 cores
    .venv/bin/python bench/bench_isa.py --reps 7 --steps 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Variables that select kernels by ISA; a child gets exactly its setting's values of them.
PIN_VARS = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR",
            "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_VERBOSE", "DNNL_VERBOSE", "MKL_VERBOSE")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2"}
SETTINGS: dict[str, dict[str, str]] = {
    "unset": {},
    "avx2": AVX2,
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE"},
    # MKL's only branch that is the same on every x86 CPU, Intel or not (SSE2 code).
    "avx2+mkl": {**AVX2, "MKL_CBWR": "COMPATIBLE"},
}
REFERENCE, PINNED = "unset", "avx2"


# ----------------------------------------------------------------------------- child: the workload
def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def worker(args) -> None:
    """Run the workload once in this process; print one JSON line; optionally save the outputs."""
    t0 = time.perf_counter()
    import robust_abstain  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads, as the stages do)
    # The package may set ISA defaults of its own: undo them, so the run has exactly its setting's
    # values. ATen, oneDNN and MKL read them at their first kernel call, which is still to come.
    for k in PIN_VARS:
        os.environ.pop(k, None)
    os.environ.update(SETTINGS[args.setting])
    import torch
    from robust_abstain.attacks.apgd import worst_case_predictions
    from robust_abstain.losses import LossConfig, get_loss
    from robust_abstain.models.checkpoint import ModelSpec
    import_s = time.perf_counter() - t0

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n_train = (args.ce_steps + args.steps) * args.batch_size
    # Learnable but seeded: a random prototype image per class, 30 % uniform noise (the model reaches
    # about 90 % accuracy and 70 % APGD robustness, so flipped decisions are visible either way).
    prototypes = torch.rand(10, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n_train + args.n_eval,), generator=g)
    x = 0.7 * prototypes[y] + 0.3 * torch.rand(len(y), 1, 28, 28, generator=g)
    x_tr, y_tr, x_ev, y_ev = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    t1, c1 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    model = ModelSpec("cnn", (1, 28, 28), 10, (0.286,), (0.353,), args.width).build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ce, trades = LossConfig("ce"), LossConfig("trades", beta=6.0, eps=0.1, pgd_steps=7)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for k, i in enumerate(range(0, n_train, args.batch_size)):
        cfg = ce if k < args.ce_steps else trades  # as the core stage, then as the base stage
        xb, yb = x_tr[i:i + args.batch_size], y_tr[i:i + args.batch_size]
        loss, _ = get_loss(cfg.name)(model, xb, yb, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t2 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        logits = model(x_ev)
    pred = logits.argmax(1)
    adv_pred, p_y = worst_case_predictions(model, x_ev, pred, eps=0.05, steps=args.apgd_steps, seed=0,
                                           batch_size=500)
    t3, c3 = time.perf_counter(), time.process_time()

    weights = [v for _, v in sorted(model.state_dict().items())]
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "dnnl": os.environ.get("DNNL_MAX_CPU_ISA", "-"), "mkl": os.environ.get("MKL_CBWR", "-"),
           "import_s": import_s, "train_s": t2 - t1, "eval_s": t3 - t2, "work_s": t3 - t1, "cpu_s": c3 - c1,
           "weights": _digest(weights), "logits": _digest([logits]), "apgd": _digest([adv_pred, p_y]),
           "acc": int((pred == y_ev).sum()), "adv_robust": int((adv_pred == pred).sum())}
    if args.dump:
        torch.save({"weights": torch.cat([w.flatten() for w in weights]), "logits": logits,
                    "adv_pred": adv_pred, "p_y": p_y}, args.dump)
    print(json.dumps(out))


def probe() -> None:
    """A tiny conv and linear forward/backward, run under ONEDNN_VERBOSE / MKL_VERBOSE by the parent."""
    import torch
    from torch import nn
    conv = nn.Conv2d(1, 16, 3, padding=1).to(memory_format=torch.channels_last)
    conv(torch.rand(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)).sum().backward()
    nn.Linear(64, 10)(torch.rand(8, 64)).sum().backward()
    print(f"capability:{torch.backends.cpu.get_cpu_capability()}")


# ----------------------------------------------------------------------------- parent
def child_env(setting: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    return {**env, **setting, **extra}


def run_child(cmd: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: child {cmd[2:]} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def verify(name: str) -> dict[str, str]:
    """What each library reports it uses under setting ``name``."""
    out = run_child([sys.executable, __file__, "--probe"],
                    child_env(SETTINGS[name], ONEDNN_VERBOSE="1", MKL_VERBOSE="1"))
    found = {"aten": "?", "onednn_isa": "?", "conv_fwd": "?", "mkl_cnr": "?"}
    for line in out.splitlines():
        if line.startswith("capability:"):
            found["aten"] = line.split(":", 1)[1]
        elif ",info,cpu,isa:" in line:
            found["onednn_isa"] = line.split("isa:", 1)[1].strip()
        elif ",convolution," in line and "forward" in line and found["conv_fwd"] == "?":
            found["conv_fwd"] = line.split(",convolution,", 1)[1].split(",")[0]
        elif line.startswith("MKL_VERBOSE SGEMM") and "CNR:" in line and found["mkl_cnr"] == "?":
            found["mkl_cnr"] = line.split("CNR:", 1)[1].split()[0]
    return found


def compare(ref: dict, other: dict) -> str:
    dw = (ref["weights"] - other["weights"]).abs().max().item()
    dl = (ref["logits"] - other["logits"]).abs().max().item()
    nat = int((ref["logits"].argmax(1) != other["logits"].argmax(1)).sum())
    adv = int((ref["adv_pred"] != other["adv_pred"]).sum())
    return f"max|dw| {dw:.1e}  max|dlogit| {dl:.1e}  pred diff {nat}  adv-pred diff {adv}"


Config = tuple[str, int]  # (setting name, torch threads)


def print_verification(settings: list[str]) -> None:
    print("\nWhat each library reports under each setting (probe subprocess):")
    print(f"  {'setting':<10} {'env':<62} {'ATen':<8} {'oneDNN ISA / conv fwd kernel':<60} MKL CNR")
    for name in settings:
        v = verify(name)
        env = " ".join(f"{k}={val}" for k, val in SETTINGS[name].items()) or "(none)"
        print(f"  {name:<10} {env:<62} {v['aten']:<8} {v['onednn_isa'] + ' / ' + v['conv_fwd']:<60} "
              f"{v['mkl_cnr']}")


def run_all(args, configs: list[Config], thread_cfgs: list[Config]) -> tuple[dict, dict]:
    """Every config ``args.reps`` times (thread checks ``args.thread_reps`` times), interleaved, the
    order reversed every other repetition; returns (per-config results, first run's saved outputs)."""
    import torch  # the parent loads torch only to compare outputs, after every child has run
    results: dict[Config, list[dict]] = {c: [] for c in configs + thread_cfgs}
    work = ["--steps", str(args.steps), "--ce-steps", str(args.ce_steps), "--batch-size", str(args.batch_size),
            "--width", str(args.width), "--n-eval", str(args.n_eval), "--apgd-steps", str(args.apgd_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        def once(cfg: Config) -> None:
            cmd = [sys.executable, __file__, "--worker", cfg[0], "--threads", str(cfg[1]), *work]
            if not results[cfg]:
                cmd += ["--dump", str(Path(tmp) / f"{cfg[0]}-{cfg[1]}.pt")]
            results[cfg].append(json.loads(run_child(cmd, child_env(SETTINGS[cfg[0]])).splitlines()[-1]))

        for rep in range(max(args.reps, args.thread_reps)):
            timed = (configs if rep % 2 == 0 else configs[::-1]) if rep < args.reps else []
            for cfg in timed + (thread_cfgs if rep < args.thread_reps else []):
                once(cfg)
            print(f"  repetition {rep + 1} done", file=sys.stderr)
        dumps = {cfg: torch.load(Path(tmp) / f"{cfg[0]}-{cfg[1]}.pt", weights_only=True) for cfg in results}
    return results, dumps


def report(args, results: dict, dumps: dict, configs: list[Config], thread_cfgs: list[Config]) -> None:
    print("\nOutputs (sha256 prefixes; 'runs' = distinct hash triples over the repetitions, 1 = deterministic):")
    print(f"  {'setting':<10} {'thr':>3} {'ATen':<7} {'oneDNN':<12} {'MKL':<11} {'weights':<17} {'logits':<17} "
          f"{'apgd':<17} {'acc':>4} {'robust':>6} runs")
    triples = {cfg: {(r["weights"], r["logits"], r["apgd"]) for r in rs} for cfg, rs in results.items()}
    for cfg, rs in results.items():
        r = rs[0]
        print(f"  {cfg[0]:<10} {cfg[1]:>3} {r['capability']:<7} {r['dnnl']:<12} {r['mkl']:<11} "
              f"{r['weights']:<17} {r['logits']:<17} "
              f"{r['apgd']:<17} {r['acc']:>4} {r['adv_robust']:>6} {len(triples[cfg])} of {len(rs)}")

    ref = (REFERENCE, args.threads)
    print(f"\nDifferences from {REFERENCE} at {args.threads} threads (first run of each):")
    for cfg in results:
        if cfg != ref:
            print(f"  {cfg[0]:<10} {cfg[1]:>3} thr: {compare(dumps[ref], dumps[cfg])}")
    if thread_cfgs:
        print(f"\n1 thread vs {args.threads} threads, same setting:")
        for name, _ in thread_cfgs:
            same = triples[(name, 1)] == triples[(name, args.threads)]
            diff = compare(dumps[(name, args.threads)], dumps[(name, 1)])
            print(f"  {name:<10} {'identical' if same else 'differ: ' + diff}")

    print(f"\nTime of the work (import excluded), {args.threads} threads, {args.reps} interleaved repetitions:")
    med = {name: statistics.median(r["work_s"] for r in results[(name, t)]) for name, t in configs}
    for name, t in configs:
        rs = results[(name, t)]
        runs = ", ".join(f"{r['work_s']:.2f}" for r in rs)
        print(f"  {name:<10} median {med[name]:6.2f} s  (runs: {runs});"
              f"  CPU time median {statistics.median(r['cpu_s'] for r in rs):.2f} s;"
              f"  import median {statistics.median(r['import_s'] for r in rs):.2f} s")
    for name, t in configs:
        if name == REFERENCE:
            continue
        rs, rr = results[(name, t)], results[ref]
        per_rep = [a["work_s"] / b["work_s"] for a, b in zip(rs, rr)]
        cpu = statistics.median(r["cpu_s"] for r in rs) / statistics.median(r["cpu_s"] for r in rr)
        aa = (" (same outputs as unset: an A/A control, its ratio is noise)"
              if triples[(name, t)] == triples[ref] else "")
        print(f"  {name} / {REFERENCE}: ratio of medians {med[name] / med[REFERENCE]:.2f}; per-rep ratios "
              f"{', '.join(f'{q:.2f}' for q in per_rep)} (median {statistics.median(per_rep):.2f}); "
              f"CPU time {cpu:.2f}{aa}")

    print("\nVerdict:")
    if PINNED in args.settings:
        p = (PINNED, args.threads)
        same = triples[p] == triples[ref]
        print(f"  (1) {PINNED} vs {REFERENCE}: outputs {'identical' if same else 'DIFFER'} -> a CPU whose best "
              f"ISA differs from this one's gets {'the same' if same else 'other'} numbers unless pinned")
        print(f"  (2) {PINNED} repeated: {'deterministic' if len(triples[p]) == 1 else 'NOT deterministic'} "
              f"({len(results[p])} runs)")
        print(f"  (3) time {PINNED} / {REFERENCE}: {med[PINNED] / med[REFERENCE]:.2f} (ratio of medians)")
    if thread_cfgs:
        diff = [n for n, _ in thread_cfgs if triples[(n, 1)] != triples[(n, args.threads)]]
        print(f"  (4) 1 vs {args.threads} threads: "
              f"{'identical for every setting' if not diff else 'DIFFER under ' + ', '.join(diff)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per setting (timed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the timed runs")
    ap.add_argument("--thread-reps", type=int, default=2,
                    help="extra untimed runs per setting at 1 thread (bitwise check 1 vs --threads); 0: none")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--ce-steps", type=int, default=5, help="cross-entropy training steps, first")
    ap.add_argument("--steps", type=int, default=5, help="TRADES training steps, then")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--apgd-steps", type=int, default=20)
    ap.add_argument("--worker", metavar="SETTING", choices=list(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe()
    if args.worker:
        args.setting = args.worker
        return worker(args)
    if args.reps < 1 or args.thread_reps < 0 or args.threads < 1:
        ap.error("--reps and --threads must be >= 1, --thread-reps >= 0")
    if REFERENCE not in args.settings:
        args.settings.insert(0, REFERENCE)
    print(f"{os.cpu_count()} cores; workload: {args.ce_steps} CE + {args.steps} TRADES steps (eps 0.1, PGD-7) "
          f"of the width-{args.width} CNN at batch {args.batch_size}, then logits + APGD-CE-{args.apgd_steps} "
          f"(eps 0.05) on {args.n_eval} points")
    print_verification(args.settings)
    configs = [(s, args.threads) for s in args.settings]
    thread_cfgs = [(s, 1) for s in args.settings] if args.threads != 1 and args.thread_reps else []
    results, dumps = run_all(args, configs, thread_cfgs)
    report(args, results, dumps, configs, thread_cfgs)


if __name__ == "__main__":
    main()
