"""Training-time augmentation on batches: the paper's AutoAugment (CIFAR-10 policy) for CIFAR
fine-tuning, and the classic random crop (4-pixel zero padding) + horizontal flip.

Everything is seeded by the ``torch.Generator`` passed in: AutoAugment draws from torch's global
RNG, so it runs inside ``torch.random.fork_rng`` seeded from that generator, which leaves the
caller's global RNG state untouched and makes a run reproducible."""

from __future__ import annotations

from typing import Optional

import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from ..errors import ParamError

#: Policy names accepted by :func:`augment_batch` (None or "none" is the identity).
POLICIES = {
    "autoaugment": AutoAugmentPolicy.CIFAR10,          # the paper's choice for CIFAR
    "autoaugment_cifar10": AutoAugmentPolicy.CIFAR10,
    "autoaugment_imagenet": AutoAugmentPolicy.IMAGENET,
    "autoaugment_svhn": AutoAugmentPolicy.SVHN,
}

_CACHE: dict[str, AutoAugment] = {}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, and a random horizontal flip,
    drawn per image from ``generator``. Works on any dtype; returns the same dtype."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))                       # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))                       # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    idx_c = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def augment_batch(x: torch.Tensor, policy: Optional[str], generator: torch.Generator,
                  random_crop_flip: bool = False) -> torch.Tensor:
    """Augment a batch (N, C, H, W) of uint8 images or floats in [0, 1]; return floats in [0, 1].

    ``policy``: None / "none" (no AutoAugment) or one of :data:`POLICIES`; AutoAugment picks one
    sub-policy per image, as the paper's per-sample transform does. ``random_crop_flip`` adds a
    4-pixel-padded random crop and a horizontal flip (applied after AutoAugment)."""
    if x.dim() != 4:
        raise ParamError(f"augment_batch expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if policy is None or policy == "none":
        out = x
    else:
        if policy not in POLICIES:
            raise ParamError(f"augmentation policy must be None, 'none' or one of "
                             f"{sorted(POLICIES)}, got {policy!r}")
        aa = _CACHE.setdefault(policy, AutoAugment(POLICIES[policy]))
        xb = _to_uint8(x)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = torch.stack([aa(img) for img in xb])
    if random_crop_flip:
        out = crop_flip(out, generator)
    return _to_float(out)
