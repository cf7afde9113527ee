"""Reading params.yaml (safely) and validating values with messages that name the key."""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Type, TypeVar

import yaml

from .errors import ParamError

E = TypeVar("E", bound=Enum)
S = TypeVar("S", bound="Section")


@dataclass(frozen=True)
class Section:
    """A params section as a typed config: subclass it as a frozen dataclass whose fields are the
    section's keys and override :meth:`validate`. :meth:`from_params` rejects unknown keys (a typo
    is an error, never a silent default) and keys the section must set (fields without a default:
    params.yaml is where their values live, so code and params cannot disagree)."""

    @classmethod
    def from_params(cls: Type[S], p: Any, prefix: str) -> S:
        if p is None:
            p = {}
        if not isinstance(p, dict):
            raise ParamError(f"{prefix} must be a mapping, got {p!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(p) - set(known))
        if unknown:
            raise ParamError(f"{prefix}: unknown keys {unknown}; known: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.name not in p
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ParamError(f"{prefix} lacks {missing}")
        cfg = cls(**p)
        cfg.validate(prefix)
        return cfg

    def validate(self, prefix: str) -> None:
        """Raise :class:`ParamError` naming ``prefix.key`` for a value out of range."""


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"params file not found: {path}")
    with open(path) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ParamError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict, name: str) -> dict:
    if name not in params or not isinstance(params[name], dict):
        raise ParamError(f"params.yaml has no section '{name}'")
    return params[name]


def number(value: Any, key: str, *, min: float | None = None, max: float | None = None,
           strict_min: bool = False, integer: bool = False) -> float | int:
    """Validate a number: finite, of the right type, within [min, max] (or (min, max] if strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{key} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ParamError(f"{key} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ParamError(f"{key} must be finite, got {value!r}")
    if min is not None and (value < min or (strict_min and value == min)):
        op = ">" if strict_min else ">="
        raise ParamError(f"{key} must be {op} {min}, got {value!r}")
    if max is not None and value > max:
        raise ParamError(f"{key} must be <= {max}, got {value!r}")
    return int(value) if integer else float(value)


def positive(value: Any, key: str) -> float:
    return number(value, key, min=0, strict_min=True)


def non_negative(value: Any, key: str) -> float:
    return number(value, key, min=0)


def count(value: Any, key: str, min: int = 1) -> int:
    return number(value, key, min=min, integer=True)


def probability(value: Any, key: str) -> float:
    return number(value, key, min=0, max=1)


def choice(value: Any, key: str, options: Iterable[str]) -> str:
    options = list(options)
    if value not in options:
        raise ParamError(f"{key} must be one of {options}, got {value!r}")
    return value


def enum(value: Any, key: str, cls: Type[E]) -> E:
    try:
        return cls(value)
    except ValueError:
        raise ParamError(f"{key} must be one of {[m.value for m in cls]}, got {value!r}") from None


def scales(value: Any, key: str) -> tuple[int, ...]:
    """Radius scales (1: eps, 2: 2 eps) of an attack, e.g. ``evaluate.sr_scales``; may be empty."""
    if not isinstance(value, list) or any(v not in (1, 2) for v in value):
        raise ParamError(f"{key} must be a list of scales from [1, 2] (empty: no APGD-conf), got {value!r}")
    return tuple(value)
