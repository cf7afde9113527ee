"""The compute device a stage runs on."""

from __future__ import annotations

import torch

from .errors import ParamError


def resolve_device(device: str, key: str = "device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must name an available device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParamError(f"{key} must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"{key} is {device!r} but no CUDA device is available (use auto or cpu)")
    return dev
