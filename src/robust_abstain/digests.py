"""Content digests: of the package's code, of tensors, of configs. (A model's weights:
:func:`robust_abstain.models.checkpoint.weights_digest`.)"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import torch

PACKAGE_ROOT = Path(__file__).resolve().parent  # the robust_abstain package


def sources_digest(root: Path) -> str:
    """sha256 of every ``.py`` file under ``root``: relative names and bytes."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        data = f.read_bytes()
        h.update(f"{f.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


@functools.cache
def source_fingerprint() -> str:
    """:func:`sources_digest` of the package (read once per process): part of the resume key, so
    a state made by other code (e.g. another ``losses.py``) is never resumed."""
    return sources_digest(PACKAGE_ROOT)


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the tensors' shapes, dtypes and values (in logical order, whatever the layout)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(*objs: Any) -> str:
    return hashlib.sha256(json.dumps([asdict(o) if hasattr(o, "__dataclass_fields__") else o
                                      for o in objs], sort_keys=True, default=str).encode()).hexdigest()[:16]
