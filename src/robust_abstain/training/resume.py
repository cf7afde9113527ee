"""Exact resume of a fit: where its state lives, what it must match (configs, initial weights, data,
the package's code), and loading it back. A state made by other code or data is removed, never
resumed."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..digests import fingerprint, source_fingerprint, tensor_digest
from ..errors import CheckpointError, ParamError
from ..io import load_checkpoint
from ..losses import LossConfig
from ..models.checkpoint import weights_digest
from .config import TrainConfig

STATE_DIR = Path("state")  # resume states, relative to the working directory (gitignored)
KILL_AT_ENV = "RA_TEST_KILL_AT"


def state_dir_for(out: str | Path) -> Path:
    """The folder of the resume state of the run that writes ``out``: :data:`STATE_DIR` followed by
    ``out``'s folder (``models/cert/headline.pt`` -> ``state/models/cert``), so two outputs with one
    name in two folders never share a state."""
    parent = Path(os.path.abspath(Path(out).parent))
    try:
        rel = parent.relative_to(Path.cwd())
    except ValueError:
        rel = parent.relative_to(parent.anchor)
    return STATE_DIR / rel


def _state_key_cfg(cfg: TrainConfig) -> dict:
    """The part of ``cfg`` that identifies a resumable state (``workers`` does not change the result)."""
    d = asdict(cfg)
    del d["workers"]
    return d


def resume_key(loss_cfg: LossConfig, cfg: TrainConfig, init: dict[str, torch.Tensor],
               train: TensorDataset, val: TensorDataset) -> str:
    """What a resume state must match: configs, initial weights, data and the package's code."""
    return fingerprint(loss_cfg, _state_key_cfg(cfg), weights_digest(init),
                       tensor_digest(train.tensors), tensor_digest(val.tensors), source_fingerprint())


def _kill_point() -> tuple[int, int] | None:
    """(epoch, batch), 1-based, from ``RA_TEST_KILL_AT=E:B``; None when unset (tests only)."""
    v = os.environ.get(KILL_AT_ENV)
    if not v:
        return None
    try:
        epoch, batch = (int(p) for p in v.split(":"))
    except ValueError:
        raise ParamError(f"{KILL_AT_ENV} must be EPOCH:BATCH (1-based), got {v!r}") from None
    return epoch, batch


def _resume(state_path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, desc: str, epochs: int) -> dict | None:
    """Load the state at ``state_path`` into ``model``, ``opt`` and ``scaler`` if its key is ``key``
    and return it; remove a state with another key (other params, data or code) or one that does
    not load, and return None."""
    if not state_path.is_file():
        return None
    try:
        st = load_checkpoint(state_path)
    except CheckpointError:
        st = None
    if not isinstance(st, dict) or st.get("key") != key:
        print(f"[{desc}] removing {state_path}: made with other params, data or code, or unreadable")
        state_path.unlink()
        return None
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(st["scaler"])
    print(f"[{desc}] resuming after epoch {st['epoch']}/{epochs} from {state_path}")
    return st
