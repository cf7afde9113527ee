"""Projected gradient descent/ascent on a caller-supplied per-sample objective (used in training).

The caller builds the objective (CE to a label, KL to the clean output, CE to the most likely other
class, ...); :func:`pgd` only knows inputs. Guarantees of :func:`pgd`:

* the result lies in the eps-ball around ``x`` (Linf or L2) **and** in [0, 1], up to float rounding;
* it is detached and has ``x``'s shape, dtype and device;
* gradients are taken with :func:`torch.autograd.grad` with respect to the input only, so no
  parameter ``.grad`` is created or changed;
* the model's train/eval mode is not touched (that is the caller's job: :func:`~.common.eval_mode`);
* randomness comes only from ``generator`` when one is given (same generator state -> same result);
  without one it comes from torch's global RNG;
* ``eps == 0`` or ``steps == 0`` returns ``x.detach().clone()`` without calling the objective.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..params import choice, count, non_negative
from .common import NORMS, l2_norm, per_sample

Objective = Callable[[torch.Tensor], torch.Tensor]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf",
            clip: bool = True) -> torch.Tensor:
    """Project ``x_adv`` into the ``norm`` ball of radius ``eps`` around ``x``; then, if ``clip``,
    clamp into [0, 1].

    For ``x`` in [0, 1] the clamp only shrinks each coordinate of ``x_adv - x``, so the result is
    in the ball *and* in [0, 1] (for Linf this is the exact projection onto the intersection; for
    L2 it is a feasible point, not necessarily the nearest one). Works per sample along dim 0."""
    norm = choice(norm, "norm", NORMS)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = l2_norm(delta)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
        delta = delta * per_sample(factor, delta)
    out = x + delta
    return out.clamp(0.0, 1.0) if clip else out


def random_init(x: torch.Tensor, eps: float, norm: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point in the ball around ``x`` (clamped to [0, 1]).

    Linf: ``x + U[-eps, eps]^d``. L2: ``x + r * eps * u`` with ``u`` a uniformly random unit
    direction (normalised Gaussian) and ``r ~ U[0, 1]`` per sample. The noise is drawn from
    ``generator`` on the generator's device (CPU by default), then moved to ``x``'s device, so a CPU
    generator gives the same start on every device."""
    norm = choice(norm, "norm", NORMS)
    gdev = generator.device if generator is not None else x.device
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=gdev, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype)
        r = torch.rand(x.shape[0], generator=generator, device=gdev, dtype=x.dtype)
        d = d / per_sample(l2_norm(d).clamp_min(1e-12), d)
        noise = d * per_sample(r * eps, d)
    return project(x + noise.to(x.device), x, eps, norm)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(l2_norm(grad).clamp_min(1e-12), grad)


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
    eps = non_negative(eps, "eps")
    steps = count(steps, "steps", min=0)
    norm = choice(norm, "norm", NORMS)
    if step_size is None:
        step_size = 2.5 * eps / steps if steps > 0 else 0.0
    else:
        step_size = non_negative(step_size, "step_size")
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
