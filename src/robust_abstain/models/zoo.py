"""The paper's pretrained models from RobustBench, loaded safely and offline.

Layout: RobustBench's own, ``model_dir/<dataset>/<threat_model>/<name>.pt`` (e.g.
``models/zoo/cifar10/Linf/Carmon2019Unlabeled.pt``), so a folder filled by
``robustbench.utils.load_model`` works here and vice versa.

Why not ``robustbench.utils.load_model``: it calls ``torch.load`` without ``weights_only`` (safe
only because torch >= 2.6 changed the default), deletes nothing when a download saved an HTML page
(a Google-Drive quota page is the usual failure) and then fails with an unpickling error on every
later run. Here:

* :func:`fetch_model` downloads a missing file with RobustBench's own Google-Drive helper into a
  temporary file that is renamed into place only once it loads, and validates a present file with
  :func:`robust_abstain.io.load_checkpoint` (``weights_only=True``, HTML detection). A corrupt file
  (HTML, empty, truncated) is **deleted** and :class:`CheckpointError` says so. A well-formed file
  that holds Python objects outside the weights-only allowlist is *not* deleted (re-downloading
  would not help); the error names the objects.
* :func:`load_zoo_model` builds the architecture from RobustBench's model table
  (``robustbench.model_zoo.model_dicts``) and loads the state dict itself, with the same
  unwrapping RobustBench applies (a ``'state_dict'`` entry, ``'module.'`` / ``'model.'``
  prefixes, ``'last'`` for two entries) and RobustBench's tolerated-mismatch list.

RobustBench models take inputs in [0, 1] and normalise inside (``DMWideResNet`` carries the
mean/std; ``Standard`` and the others were trained on un-normalised inputs), as our own nets do.

Core models (the accurate, non-robust ``F_core`` of the compositions) are listed in
:data:`CORE_CHOICES`: RobustBench's ``Standard`` WRN-28-10 for CIFAR-10; RobustBench has no
standard (non-robust) CIFAR-100 or MTSD entry, so those cores are our own, trained by the
``train_core`` stage (see :class:`CoreChoice`).
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ParamError
from ..io import atomic_path, load_checkpoint

#: Datasets and threat models this module loads (RobustBench also has ImageNet/corruptions, which
#: need different unwrapping and are not used by the paper).
DATASETS = ("cifar10", "cifar100")
THREAT_MODELS = ("Linf", "L2")


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench model the paper uses."""

    name: str
    dataset: str
    threat_model: str
    role: str          # "robust" (fine-tuned by ERA/CRA/TRADES) or "core" (accurate, non-robust)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.threat_model}/{self.name}"


#: The paper's RobustBench models (Section 5 / Appendix A.2), keyed by ``dataset/threat/name``.
PAPER_MODELS: dict[str, ZooEntry] = {e.key: e for e in (
    ZooEntry("Carmon2019Unlabeled", "cifar10", "Linf", "robust", "WRN-28-10, RST with unlabeled data"),
    ZooEntry("Gowal2020Uncovering_28_10_extra", "cifar10", "Linf", "robust", "WRN-28-10 Swish, extra data"),
    ZooEntry("Sehwag2021Proxy_R18", "cifar10", "L2", "robust", "ResNet-18, proxy (synthetic) data"),
    ZooEntry("Rebuffi2021Fixing_28_10_cutmix_ddpm", "cifar100", "Linf", "robust",
             "WRN-28-10 Swish, CutMix + DDPM data"),
    ZooEntry("Ding2020MMA", "cifar10", "Linf", "robust",
             "WRN-28-4, MMA training (the MMA baseline fine-tunes it, A.2)"),
    ZooEntry("Standard", "cifar10", "Linf", "core",
             "WRN-28-10, standard training (listed under Linf in RobustBench; threat-model-free)"),
)}


@dataclass(frozen=True)
class CoreChoice:
    """Where a dataset's core model comes from: a RobustBench entry or our own training."""

    dataset: str
    source: str                 # "robustbench" or "train"
    name: str                   # zoo name, or the models.nets ARCHS key to train
    threat_model: str | None = None
    note: str = ""


#: Core-model choices. The authors trained their own WRN-28-10 (CIFAR-100) and ResNet-50 (MTSD)
#: cores; ``models.nets`` offers ResNet-18 (``ARCHS["resnet18"]``), trained by the ``train_core`` stage
#: with standard training (and AutoAugment for CIFAR, see data/augment.py).
CORE_CHOICES: dict[str, CoreChoice] = {
    "cifar10": CoreChoice("cifar10", "robustbench", "Standard", "Linf",
                          "RobustBench's standard-trained WRN-28-10 (94.8 % clean accuracy)"),
    "cifar100": CoreChoice("cifar100", "train", "resnet18", None,
                           "RobustBench 1.1.1 has no standard CIFAR-100 entry; we train a ResNet-18 "
                           "(the authors trained a WRN-28-10)"),
    "mtsd": CoreChoice("mtsd", "train", "resnet18", None,
                       "no public MTSD classifier; we train a ResNet-18 on the 64x64 crops "
                       "(the authors trained a ResNet-50)"),
}

#: Extra globals allowed while unpickling third-party checkpoints with ``weights_only=True``:
#: training scripts often store their argparse arguments and numpy scalars (best accuracy, ...)
#: next to the weights. These only build plain data objects; nothing else is allowed.
_EXTRA_SAFE_GLOBALS: list[Any] = [argparse.Namespace, np.dtype, np.ndarray]
try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
_EXTRA_SAFE_GLOBALS += [scalar, _reconstruct]
_EXTRA_SAFE_GLOBALS += [type(np.dtype(t)) for t in ("f8", "f4", "i8", "i4", "u1", "b1")]


def _check(dataset: str, threat_model: str) -> None:
    if dataset not in DATASETS:
        raise ParamError(f"zoo dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if threat_model not in THREAT_MODELS:
        raise ParamError(f"zoo threat_model must be one of {list(THREAT_MODELS)}, got {threat_model!r}")


def zoo_path(name: str, dataset: str, threat_model: str, model_dir: str | os.PathLike) -> Path:
    """RobustBench's checkpoint path: ``model_dir/<dataset>/<threat_model>/<name>.pt``."""
    _check(dataset, threat_model)
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _zoo_entry(name: str, dataset: str, threat_model: str) -> dict:
    """RobustBench's table entry (``{'model': factory, 'gdrive_id': ...}``) or ParamError."""
    _check(dataset, threat_model)
    from ..compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    table = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    if name not in table:
        near = [n for n in table if n.lower().startswith(name.lower()[:6])][:8]
        raise ParamError(f"RobustBench has no model {name!r} for {dataset}/{threat_model}"
                         + (f"; similar names: {near}" if near else ""))
    entry = table[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise ParamError(f"{name} is an ensemble of several checkpoints; not supported here")
    return entry


def _is_unsafe_global_error(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, pickle.UnpicklingError) and "Weights only load failed" in str(cause)


class UnsafeCheckpointError(CheckpointError):
    """A well-formed PyTorch file holding objects outside the weights-only allowlist (kept)."""


def _load_validated(path: Path) -> Any:
    """Load ``path`` safely; delete it if it is corrupt (HTML, empty, truncated)."""
    try:
        with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return load_checkpoint(path)
    except CheckpointError as e:
        if _is_unsafe_global_error(e):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001 - only for the message
                unsafe = ["(unknown)"]
            raise UnsafeCheckpointError(
                f"{path} is a PyTorch file but holds Python objects outside the weights-only "
                f"allowlist ({', '.join(unsafe)}); it was kept. Convert it once, on a machine you "
                f"trust, to a plain state dict: torch.save(torch.load(p, weights_only=False)"
                f"['state_dict'], p)") from e
        if path.exists():
            path.unlink()
        raise CheckpointError(f"{e}\n=> The invalid file {path} has been REMOVED. Retry (the "
                              f"download runs again when the file is missing) or place the real "
                              f"checkpoint at {path} by hand.") from e


def _fetch(name: str, dataset: str, threat_model: str,
           model_dir: str | os.PathLike) -> tuple[Path, Any]:
    """:func:`fetch_model`, also returning the loaded checkpoint (so it is read only once)."""
    path = zoo_path(name, dataset, threat_model, model_dir)
    if path.is_file():
        return path, _load_validated(path)
    entry = _zoo_entry(name, dataset, threat_model)
    if entry.get("gdrive_id") is None:
        raise ParamError(f"RobustBench lists no download for {name}; place the file at {path}")
    from robustbench.utils import download_gdrive_new

    with atomic_path(path) as tmp:
        try:
            download_gdrive_new(entry["gdrive_id"], tmp)
        except Exception as e:  # noqa: BLE001 - offline, quota, gdown errors
            raise CheckpointError(
                f"download of {name} ({dataset}/{threat_model}, Google-Drive id "
                f"{entry['gdrive_id']}) failed: {type(e).__name__}: {e}. Retry later or place "
                f"the file at {path} by hand.") from e
        try:
            checkpoint = _load_validated(tmp)  # deletes tmp on an HTML page / empty / truncated file
        except UnsafeCheckpointError as e:
            os.replace(tmp, path)  # a real file: keep it for the one-off conversion
            raise UnsafeCheckpointError(str(e).replace(str(tmp), str(path))) from e
        except CheckpointError as e:
            raise CheckpointError(
                f"the download of {name} did not give a valid checkpoint and was removed ({e}). "
                f"Retry later or place the real file at {path} by hand.") from e
    return path, checkpoint


def fetch_model(name: str, dataset: str, threat_model: str,
                model_dir: str | os.PathLike = "models/zoo") -> Path:
    """Ensure ``model_dir/<dataset>/<threat_model>/<name>.pt`` exists and is a valid checkpoint.

    A missing file is downloaded with RobustBench's Google-Drive helper (network needed) into a
    temporary file and renamed into place only once it validates. A present file is validated
    without any network access; a corrupt one (HTML page, empty, truncated) is DELETED and
    :class:`CheckpointError` says so. Returns the path."""
    return _fetch(name, dataset, threat_model, model_dir)[0]


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> "OrderedDict[str, Any]":
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v)
                       for k, v in state_dict.items())


def unwrap_state_dict(checkpoint: Any, name: str = "") -> "OrderedDict[str, torch.Tensor]":
    """RobustBench's unwrapping: ``'last'`` (two entries), ``'state_dict'``, then the
    ``'module.'`` (DataParallel) and ``'model.'`` prefixes."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint for {name or 'model'} is a {type(checkpoint).__name__}, "
                              f"not a state dict")
    if ("Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding") \
            and "last" in checkpoint:
        checkpoint = checkpoint["last"]
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    state = _strip_prefix(checkpoint, "module.")
    state = _strip_prefix(state, "model.")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint for {name or 'model'} has non-tensor entries {bad[:5]}")
    return state


def build_zoo_architecture(name: str, dataset: str, threat_model: str) -> nn.Module:
    """RobustBench's (randomly initialised) architecture for a zoo entry; no download."""
    return _zoo_entry(name, dataset, threat_model)["model"]()


def load_zoo_model(name: str, dataset: str, threat_model: str,
                   model_dir: str | os.PathLike = "models/zoo") -> nn.Module:
    """A RobustBench model in eval mode, loaded from ``model_dir`` (downloaded only if missing)."""
    path, checkpoint = _fetch(name, dataset, threat_model, model_dir)
    state = unwrap_state_dict(checkpoint, name)
    model = build_zoo_architecture(name, dataset, threat_model)
    from robustbench.model_zoo.enums import BenchmarkDataset
    from robustbench.utils import _safe_load_state_dict  # strict, with RobustBench's known exceptions

    try:
        model = _safe_load_state_dict(model, name, state, BenchmarkDataset(dataset))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit RobustBench's architecture for {name} "
                              f"({str(e)[:500]})") from e
    return model.eval()
