"""Reproduce independent DVC stages at the same time, one GPU (or a share of the CPU cores) each.

`dvc repro` runs one stage at a time. Stages that do not depend on each other, such as the
certification shards `certify@MODEL-S` or the fine-tunes `finetune@KEY`, can run at once in the
same workspace: DVC 3 holds its repository lock only around its own bookkeeping, not while a
stage's command runs. This script

1. brings everything the chosen stages depend on up to date with one ordinary `dvc repro`,
2. runs the chosen stages with `-j` workers (in waves, if some depend on others), each `dvc --wait-for-lock repro --single-item STAGE`
   with `CUDA_VISIBLE_DEVICES` set to one GPU of `--gpus` (without `--gpus`: `RA_WORKERS`, the
   stages' worker processes, set to an equal share of the cores),
3. leaves the rest (merges, report) to a following `dvc repro`.

Each stage's log goes to `.dvc/tmp/repro_parallel/<stage>.log`. Stages that are up to date are
skipped by DVC as usual; a failed stage is named with the end of its log and makes the script
exit 1 after the others finish.

Usage:  python scripts/repro_parallel.py -j 4 --gpus 0,1,2,3 'certify@*' && dvc repro
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm


def select_stages(patterns: list[str]) -> tuple[list[list[str]], list[str]]:
    """(the stages matching any glob pattern, in waves: a stage's wave comes after those of the
    matched stages it depends on; the unmatched stages they depend on, in DAG order)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(reversed(list(nx.topological_sort(graph))))  # dependencies first
        chosen = {s for s in graph if any(fnmatch.fnmatchcase(s.addressing, p) for p in patterns)}
        deps = {s: nx.descendants(graph, s) for s in chosen}
        wave: dict = {}
        for s in order:
            if s in chosen:
                wave[s] = 1 + max((wave[d] for d in deps[s] & chosen), default=-1)
        upstream = set().union(*deps.values()) - chosen
        waves = [[s.addressing for s in order if wave.get(s) == w] for w in range(max(wave.values(), default=-1) + 1)]
        return waves, [s.addressing for s in order if s in upstream]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("patterns", nargs="+", help="stage names or globs, e.g. 'certify@*' 'finetune@*'")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="workers (default: number of GPUs, else 2)")
    ap.add_argument("--gpus", default=None, help="comma-separated GPU ids, one per running stage")
    ap.add_argument("--dry", action="store_true", help="list what would run, run nothing")
    args = ap.parse_args()
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else []
    jobs = args.jobs or len(gpus) or 2
    if jobs < 1:
        ap.error("-j must be at least 1")
    if gpus and jobs > len(gpus):
        ap.error(f"-j {jobs} needs at least {jobs} GPUs in --gpus, got {len(gpus)}")
    waves, upstream = select_stages(args.patterns)
    if not waves:
        print(f"error: no stage matches {args.patterns} (see `dvc stage list`)", file=sys.stderr)
        return 1
    for i, w in enumerate(waves):
        print(f"wave {i + 1}: {len(w)} stage(s), {min(jobs, len(w))} at a time: {' '.join(w)}")
    if args.dry:
        print(f"upstream first: {' '.join(upstream) or '(none)'}")
        return 0
    if upstream and subprocess.run(["dvc", "repro", *upstream]).returncode != 0:
        print("error: the stages these depend on failed; nothing run in parallel", file=sys.stderr)
        return 1

    logs = Path(".dvc/tmp/repro_parallel")
    logs.mkdir(parents=True, exist_ok=True)
    free: queue.Queue[str | None] = queue.Queue()
    for slot in (gpus[:jobs] if gpus else [None] * jobs):
        free.put(slot)
    workers = str(max(1, (os.cpu_count() or 1) // jobs))

    def run(stage: str) -> tuple[str, int, Path]:
        slot = free.get()
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {"RA_WORKERS": workers})}
        log = logs / f"{stage.replace('/', '_')}.log"
        try:
            with open(log, "w") as f:
                rc = subprocess.run(["dvc", "--wait-for-lock", "repro", "--single-item", stage],
                                    env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        finally:
            free.put(slot)
        return stage, rc, log

    failed: list[str] = []
    with tqdm(total=sum(map(len, waves)), desc="stages", unit="stage") as bar:
        for w in waves:
            with ThreadPoolExecutor(jobs) as pool:
                for stage, rc, log in pool.map(run, w):
                    bar.update()
                    if rc != 0:
                        failed.append(stage)
                        tail = log.read_text().strip().splitlines()[-15:]
                        tqdm.write(f"FAILED {stage} (exit {rc}), end of {log}:\n  " + "\n  ".join(tail))
            if failed:
                break
    if failed:
        print(f"error: {len(failed)} stage(s) failed: {' '.join(failed)}; later waves not run", file=sys.stderr)
        return 1
    print("done; run `dvc repro` for the stages downstream (merges, report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
