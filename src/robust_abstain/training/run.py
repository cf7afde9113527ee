"""Library functions behind the training stages, so stage scripts stay thin and tests can call them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Prepared
from ..errors import ParamError
from ..losses import LossConfig
from ..models.checkpoint import ModelSpec, load_model, save_model
from ..models.nets import ARCHS
from ..params import Section, choice, count
from .config import TrainConfig
from .loop import fit


@dataclass(frozen=True)
class ModelConfig(Section):
    """A model section (``core``, ``base``, ``noise_base``; ``finetune`` and ``cert_finetune`` hold
    only ``loss`` and ``train``): the architecture of a model trained from scratch, its ``loss``
    (:class:`~robust_abstain.losses.LossConfig`) and ``train`` (:class:`TrainConfig`) mappings, or
    ``source: zoo`` with a ``zoo`` mapping for a pretrained RobustBench model."""

    arch: str = "cnn"
    width: int | None = None
    loss: dict | None = None
    train: dict | None = None
    source: str = "train"
    zoo: dict | None = None

    def validate(self, prefix: str) -> None:
        choice(self.arch, f"{prefix}.arch", ARCHS)
        if self.width is not None:
            count(self.width, f"{prefix}.width")
        choice(self.source, f"{prefix}.source", ["train", "zoo"])


def model_spec(p: dict, data: Prepared, prefix: str) -> ModelSpec:
    cfg = ModelConfig.from_params(p, prefix)
    return ModelSpec(cfg.arch, data.input_shape, data.num_classes, tuple(data.mean), tuple(data.std),
                     cfg.width)


def bring_zoo_model(p: dict, data: Prepared, out: str | Path, prefix: str) -> None:
    """``source: zoo``: bring a pretrained RobustBench model (``zoo: {name, dataset, threat_model,
    model_dir}``) as our checkpoint, downloading only when the file is missing (then validated:
    an HTML page saved as .pt is deleted with a clear error)."""
    from ..models.checkpoint import zoo_spec
    from ..models.zoo import load_zoo_model
    z = p.get("zoo") or {}
    missing = [k for k in ("name", "dataset", "threat_model") if k not in z]
    if missing:
        raise ParamError(f"{prefix}.zoo lacks {missing}")
    model = load_zoo_model(z["name"], z["dataset"], z["threat_model"], z.get("model_dir", "models/zoo"))
    spec = zoo_spec(z["name"], z["dataset"], z["threat_model"], data.input_shape, data.num_classes)
    save_model(model, spec, out, meta={"source": "robustbench", **z})


def train_model(p: dict, data: Prepared, out: str | Path, state_dir: str | Path, prefix: str,
                init: str | Path | None = None, loss_override: dict | None = None, log=None) -> list[dict]:
    """Train (or fine-tune from ``init``) the model a params section describes; save it to ``out``.

    ``p`` holds ``arch``/``width`` (ignored when fine-tuning), ``loss`` and ``train`` mappings;
    ``loss_override`` (e.g. the sweep's loss name and beta) is merged over ``p['loss']``.
    With ``source: zoo`` the model is a pretrained RobustBench model instead (no training)."""
    if ModelConfig.from_params(p, prefix).source == "zoo" and init is None:
        bring_zoo_model(p, data, out, prefix)
        return []
    loss_p = {**(p.get("loss") or {}), **(loss_override or {})}
    loss_cfg = LossConfig.from_params(loss_p, f"{prefix}.loss")
    train_cfg = TrainConfig.from_params(p.get("train") or {}, f"{prefix}.train")
    if init is not None:
        model, spec, _ = load_model(init)
    else:
        spec = model_spec(p, data, prefix)
        torch.manual_seed(train_cfg.seed)
        model = spec.build()
    state = Path(state_dir) / (Path(out).stem + ".state.pt")
    model, history = fit(model, loss_cfg, data.split("train"), data.split("val"), train_cfg, state,
                         log=log, desc=Path(out).stem, fine_tune=init is not None)
    save_model(model, spec, out, meta={"loss": loss_p, "train": p.get("train"), "history": history})
    state.unlink(missing_ok=True)
    return history


def sweep_entry(sweep: dict, key: str) -> dict:
    if key not in sweep:
        raise ParamError(f"sweep has no entry {key!r}; entries: {sorted(sweep)}")
    if "." in key:
        raise ParamError(f"sweep key {key!r} must not contain '.', DVC reads it as a nested param "
                         f"(write e.g. 'era-0_5')")
    e = sweep[key]
    if not isinstance(e, dict) or "name" not in e or "beta" not in e:
        raise ParamError(f"sweep.{key} must be a mapping with 'name' and 'beta', got {e!r}")
    return e
