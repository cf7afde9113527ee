"""Projected gradient descent/ascent on a caller-supplied per-sample objective (used in training).

The caller builds the objective (CE to a label, KL to the clean output, CE to the most likely other
class, ...); :func:`pgd` only knows inputs. Guarantees of :func:`pgd`:

* the result lies in the eps-ball around ``x`` (Linf or L2) **and** in [0, 1], up to float rounding;
* it is detached and has ``x``'s shape, dtype and device;
* gradients are taken with :func:`torch.autograd.grad` with respect to the input only, so no
  parameter ``.grad`` is created or changed;
* the model's train/eval mode is not touched (that is the caller's job, see ``losses.eval_mode``);
* randomness comes only from ``generator`` when one is given (same generator state -> same result);
  without one it comes from torch's global RNG;
* ``eps == 0`` or ``steps == 0`` returns ``x.detach().clone()`` without calling the objective.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import ParamError

NORMS = ("linf", "l2")

Objective = Callable[[torch.Tensor], torch.Tensor]


def check_norm(norm: str, key: str = "norm") -> str:
    """Return the canonical lower-case norm name ('linf' or 'l2') or raise :class:`ParamError`."""
    if isinstance(norm, str) and norm.lower() in NORMS:
        return norm.lower()
    raise ParamError(f"{key} must be one of {list(NORMS)}, got {norm!r}")


def check_eps(eps: float, key: str = "eps") -> float:
    """Return eps as a float if it is a finite number >= 0, else raise :class:`ParamError`."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ParamError(f"{key} must be a finite number >= 0, got {eps!r}")
    return float(eps)


def check_steps(steps: int, key: str = "steps") -> int:
    """Return steps as an int if it is a whole number >= 0, else raise :class:`ParamError`."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not float(steps).is_integer() \
            or steps < 0:
        raise ParamError(f"{key} must be an integer >= 0, got {steps!r}")
    return int(steps)


def _view_per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def l2_norm(d: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shape [B]."""
    return d.flatten(1).norm(p=2, dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf",
            clip: bool = True) -> torch.Tensor:
    """Project ``x_adv`` into the ``norm`` ball of radius ``eps`` around ``x``; then, if ``clip``,
    clamp into [0, 1].

    For ``x`` in [0, 1] the clamp only shrinks each coordinate of ``x_adv - x``, so the result is
    in the ball *and* in [0, 1] (for Linf this is the exact projection onto the intersection; for
    L2 it is a feasible point, not necessarily the nearest one). Works per sample along dim 0."""
    norm = check_norm(norm)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = l2_norm(delta)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
        delta = delta * _view_per_sample(factor, delta)
    out = x + delta
    return out.clamp(0.0, 1.0) if clip else out


def random_init(x: torch.Tensor, eps: float, norm: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point in the ball around ``x`` (clamped to [0, 1]).

    Linf: ``x + U[-eps, eps]^d``. L2: ``x + r * eps * u`` with ``u`` a uniformly random unit
    direction (normalised Gaussian) and ``r ~ U[0, 1]`` per sample. The noise is drawn from
    ``generator`` on the generator's device (CPU by default), then moved to ``x``'s device, so a CPU
    generator gives the same start on every device."""
    norm = check_norm(norm)
    gdev = generator.device if generator is not None else x.device
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=gdev, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype)
        r = torch.rand(x.shape[0], generator=generator, device=gdev, dtype=x.dtype)
        d = d / _view_per_sample(l2_norm(d).clamp_min(1e-12), d)
        noise = d * _view_per_sample(r * eps, d)
    return project(x + noise.to(x.device), x, eps, norm)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _view_per_sample(l2_norm(grad).clamp_min(1e-12), grad)


def pgd(objective: Objective, x: torch.Tensor, eps: float, steps: int, step_size: float | None = None,
        norm: str = "linf", random_start: bool = True, generator: torch.Generator | None = None,
        maximize: bool = True, start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent (``maximize``) or descent on ``objective`` within the eps-ball.

    Args:
        objective: maps a batch ``x_adv`` (same shape as ``x``) to a per-sample loss of shape [B].
            It is called with grad enabled and is differentiated w.r.t. ``x_adv`` only.
        x: clean inputs in [0, 1], shape [B, ...].
        eps: radius (>= 0) of the Linf or L2 ball.
        steps: number of gradient steps (>= 0).
        step_size: per-step size; default ``2.5 * eps / steps``.
        norm: ``"linf"`` (sign steps) or ``"l2"`` (L2-normalised gradient steps).
        random_start: start from :func:`random_init` instead of ``x``.
        generator: source of the random start (reproducible); torch's global RNG when None.
        maximize: ascend (True) or descend (False) the objective.
        start: the first iterate (projected into the ball around ``x``), e.g. another attack's
            point; overrides ``random_start``.

    Returns:
        The last iterate, detached, in the ball around ``x`` and in [0, 1] (see module docstring).
    """
    eps = check_eps(eps)
    steps = check_steps(steps)
    norm = check_norm(norm)
    if step_size is None:
        step_size = 2.5 * eps / steps if steps > 0 else 0.0
    elif isinstance(step_size, bool) or not isinstance(step_size, (int, float)) \
            or not math.isfinite(step_size) or step_size < 0:
        raise ParamError(f"step_size must be a finite number >= 0 or None, got {step_size!r}")
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    if start is not None:
        x_adv = project(start.detach().to(x.device, x.dtype), x, eps, norm)
    else:
        x_adv = random_init(x, eps, norm, generator) if random_start else x.clone()
    sign = 1.0 if maximize else -1.0
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = objective(x_adv)
            if loss.dim() != 1 or loss.shape[0] != x.shape[0]:
                raise ValueError(f"pgd objective must return a per-sample loss of shape [{x.shape[0]}], "
                                 f"got {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            x_adv = project(x_adv + sign * step_size * _direction(grad, norm), x, eps, norm)
    return x_adv.detach()
