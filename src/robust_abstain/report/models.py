"""The report's inputs (one :class:`ModelInfo` per model), what its sections share (the
:class:`Context`, a model's :class:`Rates`), and the flat metric entries they return (derived from
typed results by :func:`flat`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..analysis import records as R
from ..analysis.stats import Interval, rate_ci
from ..errors import ParamError

ROLES = ("core", "base", "sweep", "headline")
FINE_TUNED = ("sweep", "headline")


@dataclass
class ModelInfo:
    """One model's records for the report.

    ``name``: unique label; ``loss``: training loss ("std", "trades", "era", "mart", "dga",
    "noise", "cra", ...); ``beta``: the loss's beta (None for core/base); ``role``:
    "core" (accurate standard model), "base" (robust model before fine-tuning), "sweep" (a point of
    the beta sweep), "headline" (the ``loss.beta`` run); ``records``: test records (empirical, or
    certified for the ``certified`` list); ``val_records``: the same on validation points (needed
    for every choice; a model without them is reported but not composed)."""

    name: str
    loss: str
    beta: float | None
    role: str
    records: pd.DataFrame
    val_records: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ParamError(f"model {self.name}: role must be one of {list(ROLES)}, got {self.role!r}")

    @property
    def info(self) -> dict[str, Any]:
        """name, loss, beta (NaN for None) and role: the first columns of the report's frames."""
        return {"name": self.name, "loss": self.loss, "beta": nan_if_none(self.beta), "role": self.role}


def nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def with_role(models: Sequence[ModelInfo], role: str) -> ModelInfo | None:
    """The model with ``role`` (at most one may have it), or None."""
    found = [m for m in models if m.role == role]
    if len(found) > 1:
        raise ParamError(f"at most one model may have role '{role}', got {[m.name for m in found]}")
    return found[0] if found else None


def check_roles(models: Sequence[ModelInfo]) -> None:
    """At most one core, one base and one headline model."""
    for role in ("core", "base", "headline"):
        with_role(models, role)


def check_records(models: Sequence[ModelInfo], columns: list[str], kind: str) -> None:
    """Unique names, the schema's columns, and the same test (and validation) points for every model."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ParamError(f"{kind}model names must be unique, got {names}")
    for m in models:
        R.check(m.records, columns, f"{kind}records of {m.name}")
        if m.val_records is not None:
            R.check(m.val_records, columns, f"{kind}validation records of {m.name}")
    R.align(*[m.records for m in models], names=names)
    val = [m for m in models if m.val_records is not None]
    if val:
        R.align(*[m.val_records for m in val], names=[f"{m.name} (val)" for m in val])


@dataclass(frozen=True)
class Context:
    """What every section shares: the threat model's ``eps``, the number of test points ``n``, the
    paired bootstrap's ``seed``."""

    eps: float
    n: int
    seed: int

    @property
    def head(self) -> str:
        """The line under each page's title."""
        return (f"Threat model: ε = {self.eps:g} (robust selection uses 2ε = {2 * self.eps:g}, "
                f"Appendix A.3); {self.n} test points. Numbers in percent, [95 % interval].\n\n")


@dataclass(frozen=True)
class Rates:
    """(1)/(2) of one model with exact 95 % intervals, at eps and at 2 eps (``_2x``); for a smoothed
    model, certified at the radii r1 and r2."""

    nat_acc: Interval
    rob_acc: Interval
    rob_inacc: Interval
    rob_acc_2x: Interval
    rob_inacc_2x: Interval

    @classmethod
    def of(cls, masks: dict[str, Any]) -> "Rates":
        """From per-point outcomes (metrics.model_masks, metrics.certified_model_masks)."""
        return cls(**{k: rate_ci(masks[k]) for k in RATES})


RATES = tuple(f.name for f in fields(Rates))

# ---------------------------------------------------------------------------------- metric entries
def flat(obj: Any, names: Sequence[str], prefix: str = "", bounds: bool = True) -> dict[str, Any]:
    """The fields ``names`` of ``obj`` as flat entries ``prefix/name``: an :class:`Interval` as
    ``name``, ``name_lo``, ``name_hi`` (``name`` alone without ``bounds``), anything else as is."""
    out: dict[str, Any] = {}
    p = f"{prefix}/" if prefix else ""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, Interval):
            out[p + name] = v.value
            if bounds:
                out[p + name + "_lo"], out[p + name + "_hi"] = v.lo, v.hi
        else:
            out[p + name] = v
    return out


def measured(entries: dict[str, Any]) -> dict[str, Any]:
    """``entries`` without the rates that were not measured (None or NaN)."""
    return {k: v for k, v in entries.items()
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))}


def rounded(entries: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's values: fractions rounded to 4 decimals, NaN as None, bools and numpy
    integers as ints."""
    out = {}
    for k, v in entries.items():
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        if isinstance(v, (float, np.floating)):
            v = None if not np.isfinite(v) else round(float(v), 4)
        elif isinstance(v, np.integer):
            v = int(v)
        out[k] = v
    return out
