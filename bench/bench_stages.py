"""Where `dvc repro` of the default spends its time: each stage's wall time (from DVC's own
"Running stage" lines, so DVC's bookkeeping between stages counts towards the stage before), summed
by kind of stage, with each kind's share of the whole run.

By default in a fresh clone of HEAD in a temporary folder (the repository's own outputs are left
alone), with this environment's Python and DVC; ``--here`` runs `dvc repro` in the repository
itself, ``--force`` re-runs every stage, ``--log FILE`` reads the timestamped log of an earlier
run (written with ``--save-log``) instead of running anything.

Usage: python bench/bench_stages.py [--here] [--force] [--save-log FILE] [--log FILE]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"Running stage '([^']+)'")


def run_repro(cwd: Path, force: bool) -> list[tuple[float, str]]:
    """`dvc repro` in ``cwd``: (seconds since start, line) for every output line."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["dvc", "repro"] + (["--force"] if force else [])
    t0 = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as p:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    lines.append((time.perf_counter() - t0, f"exit {p.returncode}"))
    if p.returncode != 0:
        sys.exit("dvc repro failed:\n" + "\n".join(l for _, l in lines[-30:]))
    return lines


def stage_times(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """(stage, seconds) in run order: from its "Running stage" line to the next one (or the end)."""
    starts = [(t, m.group(1)) for t, line in lines for m in [STAGE.search(line)] if m]
    end = lines[-1][0]
    return [(name, (starts[i + 1][0] if i + 1 < len(starts) else end) - t) for i, (t, name) in enumerate(starts)]


def report(times: list[tuple[str, float]], total: float) -> str:
    kinds: dict[str, list[float]] = defaultdict(list)
    for name, sec in times:
        kinds[name.split("@")[0]].append(sec)
    rows = [f"{'stage kind':<16}{'stages':>7}{'seconds':>9}{'share':>7}{'median':>8}"]
    for kind, secs in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        med = sorted(secs)[len(secs) // 2]
        rows.append(f"{kind:<16}{len(secs):>7}{sum(secs):>9.1f}{sum(secs) / total:>7.1%}{med:>8.1f}")
    rows.append(f"{'dvc repro':<16}{len(times):>7}{total:>9.1f}")
    per = "\n".join(f"  {name:<28}{sec:7.1f} s" for name, sec in times)
    return "\n".join(rows) + "\n\nper stage, in run order:\n" + per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--here", action="store_true", help="run in this repository, not a fresh clone")
    ap.add_argument("--force", action="store_true", help="dvc repro --force")
    ap.add_argument("--log", help="read this timestamped log instead of running")
    ap.add_argument("--save-log", help="write the timestamped log here")
    args = ap.parse_args()
    if args.log:
        text = Path(args.log).read_text().splitlines()
        lines = [(float(t), line) for t, _, line in (row.partition(" ") for row in text)]
    elif args.here:
        lines = run_repro(ROOT, args.force)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            lines = run_repro(clone, args.force)
    if args.save_log:
        Path(args.save_log).write_text("".join(f"{t:.3f} {line}\n" for t, line in lines))
    print(report(stage_times(lines), lines[-1][0]))


if __name__ == "__main__":
    main()
