"""Helpers for the thin stage scripts in stages/: one clear error line and a non-zero exit for
any user-facing error, params read safely, deterministic CPU threads."""

from __future__ import annotations

import sys
from typing import Callable

from .dag import pipeline_section
from .errors import ParamError, RobustAbstainError
from .params import load_params, section


def run(main: Callable[[], None], threads: int | None = None) -> None:
    """Call ``main``; turn a :class:`RobustAbstainError` into ``error: ...`` on stderr and exit 1.
    Stages that use torch (imported by then) compute at ``threads`` CPU threads (default
    :data:`robust_abstain.parallel.THREADS`, one; the training stages pass
    :data:`~robust_abstain.parallel.TRAIN_THREADS`) and spread their independent pieces of work over
    worker processes at one thread each (:func:`robust_abstain.parallel.pmap`): results depend on
    the thread count (bench/bench_isa.py), not on the number of workers."""
    if "torch" in sys.modules:
        from .parallel import THREADS, set_threads
        set_threads(threads or THREADS)
    try:
        main()
    except RobustAbstainError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def params(*names: str, path: str = "params.yaml") -> dict | tuple[dict, ...]:
    """The named sections of params.yaml (a stage reads only its own sections). Refuses a params
    file whose ``pipeline`` section (the models dvc.yaml's stages run on) is not the one its
    ``sweep``, ``seeds`` and ``cert_sweep`` imply: a stage of a model the pipeline does not run
    would be missing."""
    p = load_params(path)
    if "pipeline" in p and p["pipeline"] != pipeline_section(p):
        raise ParamError(f"{path}: the pipeline section does not list the models that sweep, seeds and "
                         f"cert_sweep name; run: python scripts/sync_pipeline.py {path}")
    out = tuple(section(p, n) for n in names)
    return out[0] if len(out) == 1 else out
