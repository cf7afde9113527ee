"""Our own model checkpoints: the architecture spec and the weights, nothing executable.

A checkpoint is ``{"spec": {...plain values...}, "state_dict": {...tensors...}, "meta": {...}}``,
loaded with ``weights_only=True``."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import load_checkpoint, save_checkpoint
from .nets import build_model


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    width: int | None = None

    def build(self) -> nn.Module:
        if self.arch.startswith(ZOO_PREFIX):  # a RobustBench architecture (normalisation inside)
            from .zoo import build_zoo_architecture
            dataset, threat_model, name = self.arch[len(ZOO_PREFIX):].split("/", 2)
            return build_zoo_architecture(name, dataset, threat_model)
        model = build_model(self.arch, self.input_shape, self.num_classes, self.mean, self.std, self.width)
        return to_fast_layout(model, self.input_shape)


ZOO_PREFIX = "zoo:"


def zoo_spec(name: str, dataset: str, threat_model: str, input_shape, num_classes: int) -> ModelSpec:
    """The spec of a RobustBench model: ``arch = "zoo:<dataset>/<threat_model>/<name>"``."""
    return ModelSpec(f"{ZOO_PREFIX}{dataset}/{threat_model}/{name}", tuple(input_shape), num_classes,
                     (0.0,), (1.0,))


def to_fast_layout(model: nn.Module, input_shape) -> nn.Module:
    """channels_last for image models: about 2x faster convolutions on this kind of CPU (bench/)."""
    return model.to(memory_format=torch.channels_last) if len(input_shape) == 3 else model


def save_model(model: nn.Module, spec: ModelSpec, path: str | Path, meta: dict | None = None) -> None:
    d = asdict(spec)
    d["input_shape"], d["mean"], d["std"] = list(spec.input_shape), list(spec.mean), list(spec.std)
    save_checkpoint({"spec": d, "state_dict": model.state_dict(), "meta": meta or {}}, path)


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a model saved by :func:`save_model`, in eval mode."""
    st = load_checkpoint(path)
    if not isinstance(st, dict) or "spec" not in st or "state_dict" not in st:
        raise CheckpointError(f"{path} is not a robust-abstain model checkpoint (no spec/state_dict)")
    s = st["spec"]
    spec = ModelSpec(s["arch"], tuple(s["input_shape"]), s["num_classes"], tuple(s["mean"]),
                     tuple(s["std"]), s.get("width"))
    model = spec.build()
    try:
        model.load_state_dict(st["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture {spec}: {e}") from e
    return model.eval(), spec, st.get("meta", {})


def weights_digest(model_or_state_dict: nn.Module | Mapping[str, Any]) -> str:
    """sha256 (hex) of a model's weights: each state-dict entry's name and its tensor's bytes in
    logical order (whatever the memory layout), a non-tensor entry (a module's extra state) by its
    ``repr``. Equal for a model and its ``state_dict()``; the certified shards record it."""
    state = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
             else model_or_state_dict)
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(t).encode())
    return h.hexdigest()
