"""Importing RobustBench 1.1.1 in an environment that has PyPI's ``pyautoattack`` only.

RobustBench 1.1.1 (``robustbench/eval.py``) does, at import time::

    from autoattack import AutoAttack
    from autoattack.state import EvaluationState

and later, in ``robustbench.eval.benchmark`` only::

    AutoAttack(model, norm=..., eps=..., version='standard', device=..., log_path=...)
    adversary.run_standard_evaluation(x, y, bs=batch_size, state_path=...)
    EvaluationState.from_disk(path)

The reference AutoAttack is not on PyPI under the name ``autoattack``; PyPI's ``pyautoattack``
(module ``pyautoattack``) is the same code with a keyword-only API: no ``log_path`` argument and
``batch_size=`` instead of ``bs=``. :func:`import_robustbench` therefore registers, only when
``autoattack`` itself is not importable, a small alias in ``sys.modules``:

* ``autoattack``: a shim module whose ``AutoAttack`` subclasses ``pyautoattack.AutoAttack`` and
  accepts the two old spellings (``log_path`` attaches a file handler to pyautoattack's
  ``auto-attack`` logger; ``bs`` is passed on as ``batch_size``); every other attribute is
  forwarded to ``pyautoattack``;
* ``autoattack.<sub>`` for each of pyautoattack's submodules (``state``, ``autopgd_base``,
  ``fab_pt``, ``square``, ``checks``, ``other_utils``, ...): the very same module objects.

RobustBench also imports ``pkg_resources`` (setuptools < 81) and ``torch.jit.interface``; their
deprecation warnings are silenced during the import. Nothing here touches the network.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import sys
import types
import warnings
from typing import Any

ALIAS = "autoattack"
PROVIDER = "pyautoattack"

#: What robustbench 1.1.1 imports from ``autoattack`` (checked against its source).
ROBUSTBENCH_NEEDS = ("autoattack.AutoAttack", "autoattack.state.EvaluationState")


def _make_shim(provider: types.ModuleType) -> types.ModuleType:
    """The ``autoattack`` shim module: pyautoattack plus the old call spellings."""
    base = provider.AutoAttack

    class AutoAttack(base):  # type: ignore[misc, valid-type]
        """``pyautoattack.AutoAttack`` accepting the reference package's ``log_path``/``bs``."""

        def __init__(self, model: Any, *args: Any, log_path: str | None = None, **kwargs: Any):
            if args:  # reference API: AutoAttack(model, norm, eps, ...) positionally
                for key, value in zip(("norm", "eps"), args):
                    kwargs.setdefault(key, value)
            super().__init__(model, **kwargs)
            if log_path is not None:
                import os
                target = os.path.abspath(log_path)
                if not any(getattr(h, "baseFilename", None) == target for h in self.logger.handlers):
                    handler = logging.FileHandler(target)
                    handler.setLevel(logging.DEBUG)
                    self.logger.addHandler(handler)
                if self.logger.level == logging.NOTSET or self.logger.level > logging.DEBUG:
                    self.logger.setLevel(logging.DEBUG)

        def run_standard_evaluation(self, x_orig: Any, y_orig: Any, *args: Any,
                                    bs: int | None = None, **kwargs: Any) -> Any:
            if args:  # reference API: run_standard_evaluation(x, y, bs)
                kwargs.setdefault("batch_size", args[0])
            if bs is not None:
                kwargs.setdefault("batch_size", bs)
            state_path = kwargs.get("state_path")
            if isinstance(state_path, str):
                from pathlib import Path
                kwargs["state_path"] = Path(state_path)
            return super().run_standard_evaluation(x_orig, y_orig, **kwargs)

    AutoAttack.__qualname__ = AutoAttack.__name__ = "AutoAttack"
    shim = types.ModuleType(ALIAS, f"Alias of {PROVIDER} registered by robust_abstain.compat "
                                   f"(see its docstring).")
    shim.AutoAttack = AutoAttack
    shim.__version__ = getattr(provider, "__version__", "unknown")
    shim.__robust_abstain_alias_of__ = PROVIDER

    def __getattr__(name: str) -> Any:  # forward everything else to pyautoattack
        return getattr(provider, name)

    shim.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return shim


def register_autoattack_alias() -> bool:
    """Make ``import autoattack`` work via ``pyautoattack``; return True if an alias was added.

    Does nothing (returns False) when a real ``autoattack`` is importable or the alias is already
    registered. Raises ImportError naming the fix when neither package is installed."""
    existing = sys.modules.get(ALIAS)
    if existing is not None:
        return False
    if importlib.util.find_spec(ALIAS) is not None:
        return False
    try:
        provider = importlib.import_module(PROVIDER)
    except ImportError as e:
        raise ImportError("robustbench needs `autoattack`; install PyPI's reference package with "
                          "`pip install pyautoattack==0.2.0` (aliased by robust_abstain.compat)") from e
    shim = _make_shim(provider)
    sys.modules[ALIAS] = shim
    for info in pkgutil.iter_modules(provider.__path__):
        if info.ispkg or info.name.startswith(("utils_tf", "fab_tf")):
            continue  # examples/ and the TensorFlow adapters are not needed (and need TF)
        sub = importlib.import_module(f"{PROVIDER}.{info.name}")
        sys.modules[f"{ALIAS}.{info.name}"] = sub
        setattr(shim, info.name, sub)
    return True


def import_robustbench() -> types.ModuleType:
    """Import and return ``robustbench``, registering the ``autoattack`` alias first if needed."""
    register_autoattack_alias()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.interface.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            import robustbench
            import robustbench.utils  # noqa: F401  (load_model, download helpers)
            import robustbench.model_zoo  # noqa: F401  (the model dicts)
        except ImportError as e:
            raise ImportError(f"cannot import robustbench ({e}); install robustbench==1.1.1 and "
                              f"setuptools<81 (it imports pkg_resources)") from e
    return robustbench
