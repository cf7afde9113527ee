"""Per-epoch metrics with dvclive (no edits to dvc.yaml, no git needed)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def epoch_logger(directory: str | None) -> Iterator[Callable[[int, dict], None] | None]:
    if directory is None:
        yield None
        return
    from dvclive import Live

    with Live(directory, dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(epoch: int, metrics: dict) -> None:
            for k, v in metrics.items():
                live.log_metric(k, v)
            live.next_step()
        yield log
