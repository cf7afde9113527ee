"""File I/O with three guarantees: outputs appear atomically (temp file, then rename), with the
permissions of any newly created file (0666 less the umask, not the temp file's 0600), and
checkpoints load with ``weights_only=True`` so nothing in a data file executes code."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.
    ``path`` then has mode ``0o666 & ~umask``, as a file made by ``open(path, "w")`` would.

    On any exception the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_csv(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _canonical(obj: Any) -> Any:
    """``obj`` with every dict, list and tuple rebuilt and every string interned: pickle shares an
    object it meets twice (its memo), so whether two equal strings are one object or two (e.g. a
    history's keys in a run, or the same keys loaded back from a resume state) would change the
    bytes. After this, equal strings are always one object and containers never are."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):   # (a state_dict is an OrderedDict with a _metadata attribute: kept)
        out = type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
        for k, v in getattr(obj, "__dict__", {}).items():
            setattr(out, k, _canonical(v))
        return out
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_canonical(v) for v in obj)
    return obj


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """``torch.save`` a dict of tensors / plain Python values, atomically, with bytes that depend on
    the content only: through a file object, so the archive's inner folder name is fixed
    ("archive", with a path torch names it after the random temp file), and :func:`_canonical`, so
    the pickle does not depend on which equal strings happen to be one object. Equal states give
    equal bytes, also after a resume, and DVC sees no change."""
    import torch  # here, not at the top: CSV/JSON writers (e.g. the certify_merge stage) need no torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_canonical(state), f)


_HTML_PREFIXES = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")


def load_checkpoint(path: str | os.PathLike, map_location: "str | torch.device" = "cpu") -> Any:
    """Load a checkpoint safely (``weights_only=True``) or raise :class:`CheckpointError`.

    Recognises the common failure of a download that saved an HTML page (e.g. a Google-Drive
    quota page) under a ``.pt`` name, and says which file to delete."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty; delete it and re-run the stage that makes it")
    if head.lstrip().lower().startswith(_HTML_PREFIXES):
        raise CheckpointError(
            f"checkpoint {path} is an HTML page, not a PyTorch file (a failed or rate-limited "
            f"download). Delete {path} and retry the download, or place the real file there."
        )
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, zip errors, unsafe globals
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); "
                              f"delete it and re-create it") from e
