"""What every attack (and certification) shares: the threat-model norms, the model's mode during an
attack, per-sample broadcasting and norms, and where a model lives."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

NORMS = ("linf", "l2")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block (dropout off, batch norm on running statistics),
    as an attack or a certification must; afterwards, even on an error, every submodule gets its own
    previous mode back (a model in train mode with one frozen submodule comes back exactly so).

    Example::

        >>> with eval_mode(model):
        ...     x_adv = pgd(objective, x, eps=0.1, steps=10)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``v`` of shape [B] viewed as [B, 1, ..., 1] with ``like``'s number of dimensions, so that it
    scales (or selects, for a mask) each sample of a batch shaped like ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def l2_norm(d: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shape [B]."""
    return d.flatten(1).norm(p=2, dim=1)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def channels_last_model(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are stored channels_last."""
    cl = torch.channels_last
    return any(p.dim() == 4 and p.is_contiguous(memory_format=cl) and not p.is_contiguous()
               for p in model.parameters())
