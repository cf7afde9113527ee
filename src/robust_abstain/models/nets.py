"""Small networks for the embedded default. Normalisation lives inside the model, so every
attack and certificate works on [0, 1] inputs."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """x -> (x - mean) / std per channel (or per feature for flat inputs)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def mlp(in_features: int, num_classes: int, width: int = 64, depth: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int, num_classes: int, side: int = 28, width: int = 32) -> nn.Sequential:
    """conv(w) -> pool -> conv(2w) -> pool -> fc(128) -> fc(classes); no BatchNorm, so train/eval
    mode only matters for the attack-time guarantee, not for the numbers."""
    s = side // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * s * s, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


def _mlp(input_shape: Sequence[int], num_classes: int, width: int | None) -> list[nn.Module]:
    return [nn.Flatten(), mlp(int(torch.tensor(input_shape).prod()), num_classes, width=width or 64)]


def _cnn(input_shape: Sequence[int], num_classes: int, width: int | None) -> list[nn.Module]:
    c, h, w = input_shape
    if h != w:
        raise ValueError(f"cnn expects square inputs, got {input_shape}")
    return [small_cnn(c, num_classes, side=h, width=width or 32)]


def _resnet18(input_shape: Sequence[int], num_classes: int, width: int | None) -> list[nn.Module]:
    from torchvision.models import resnet18
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return [net]


#: Architectures by name: ``layers(input_shape, num_classes, width)`` (after the normalisation layer),
#: with what each is for.
#: Adding one: a builder here, one entry, ``arch: <name>`` in a model section and a test.
ARCHS: dict[str, tuple[Callable[[Sequence[int], int, int | None], list[nn.Module]], str]] = {
    "mlp": (_mlp, "the paper's 4 x 64 MLP for the synthetic 3-Gaussians (Figure 1)"),
    "cnn": (_cnn, "a small CNN for 1 x 28 x 28 Fashion-MNIST"),
    "resnet18": (_resnet18, "torchvision ResNet-18 for 3 x 32 x 32 (paper-profile cores; needs a GPU)"),
}


def build_model(arch: str, input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float], std: Sequence[float], width: int | None = None) -> nn.Module:
    """A classifier f: [0, 1]^input_shape -> logits, with normalisation as its first layer."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")
    return nn.Sequential(Normalize(mean, std), *ARCHS[arch][0](input_shape, num_classes, width))
