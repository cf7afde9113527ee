"""Helpers for the thin stage scripts in stages/: one clear error line and a non-zero exit for
any user-facing error, params read safely, deterministic CPU threads."""

from __future__ import annotations

import os
import sys
from typing import Callable

import torch

from .errors import RobustAbstainError
from .params import load_params, section


def run(main: Callable[[], None]) -> None:
    """Call ``main``; turn a :class:`RobustAbstainError` into ``error: ...`` on stderr and exit 1."""
    torch.set_num_threads(int(os.environ.get("RA_THREADS", torch.get_num_threads())))
    try:
        main()
    except RobustAbstainError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def params(*names: str, path: str = "params.yaml") -> dict | tuple[dict, ...]:
    """The named sections of params.yaml (a stage reads only its own sections)."""
    p = load_params(path)
    out = tuple(section(p, n) for n in names)
    return out[0] if len(out) == 1 else out
