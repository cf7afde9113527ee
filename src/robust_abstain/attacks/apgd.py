"""APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks") for evaluation, with two objectives:

* ``"ce"``: maximise the cross-entropy CE(f(x'), y);
* ``"conf"``: equation (17) of Merkli et al.: maximise ``max_{c != y} softmax(f(x'))_c``, the attack
  on the softmax-response selector (13).

The algorithm follows the APGD paper (Algorithm 1 and Section 3.2):

* checkpoints ``w_j = ceil(p_j * N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``;
* step size ``eta = 2 * eps`` (Linf and L2), halved per sample at a checkpoint when
  (1) the fraction of steps since the last checkpoint that increased the objective is below ``rho``,
  or (2) neither the step size nor the best objective changed since the last checkpoint; on halving
  the iterate restarts from the best point found so far (with that point's gradient);
* momentum ``alpha = 0.75``; the first step has none;
* ``x^(k+1) = P(x^k + alpha (z^(k+1) - x^k) + (1 - alpha)(x^k - x^(k-1)))``,
  ``z^(k+1) = P(x^k + eta * s(grad))`` with ``s`` = sign (Linf) or L2-normalisation (L2); ``P``
  projects onto the eps-ball and clamps to [0, 1].

The step rule only uses the sign (Linf) or the direction (L2) of each sample's gradient and the
objective only through comparisons, so APGD is invariant to strictly increasing transformations of
a sample's objective. We therefore optimise ``log max_{c != y} softmax_c`` (a log-sum-exp, which
does not underflow when the model is confident) for "conf"; this is the same attack as (17).

What :meth:`APGD.perturb` returns, per sample: the *worst* point found, i.e. a point where
``argmax f(x') != y`` if any was found (for "ce" the first one found: the sample then leaves the
active batch, which is what makes this implementation faster than the reference; for "conf" the
sample keeps being attacked and the misclassified point with the highest (17) is kept), else the
point with the highest objective among the clean point and all iterates of all restarts.
Samples already misclassified at ``x`` (``argmax f(x) != y``) are returned unchanged.

This module holds the attack loop; the checkpoints, the step-size rule, a run's per-sample state
and the returned points are kept in :mod:`.apgd_state`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParamError
from ..params import choice, count, non_negative, number, probability
from .apgd_state import Iterates, StepSizeSchedule, Worst, checkpoints
from .common import NORMS, channels_last_model, eval_mode, l2_norm, model_device, per_sample
from .pgd import project

OBJECTIVES = ("ce", "conf")
MOMENTUM = 0.75


def _objective(logits: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-sample objective to maximise: CE to y, or log max_{c != y} softmax_c (monotone in (17))."""
    if objective == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    logp = F.log_softmax(logits, dim=1)
    return logp.scatter(1, y[:, None], float("-inf")).max(1).values


def max_other_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(17): ``max_{c != y} softmax(logits)_c`` per row."""
    return F.softmax(logits, dim=1).scatter(1, y[:, None], 0.0).max(1).values


class APGD:
    """Untargeted APGD in the Linf or L2 ball with the "ce" or "conf" (17) objective.

    Args:
        model: a classifier mapping inputs in [0, 1] to logits.
        norm: ``"linf"`` or ``"l2"``.
        eps: radius of the threat model (>= 0; required). ``eps == 0`` makes :meth:`perturb`
            return ``x``.
        steps: APGD iterations N (>= 0). The attack evaluates the model N + 1 times per restart.
        restarts: random restarts (>= 1); restart r > 0 attacks only samples not yet misclassified.
        objective: ``"ce"`` or ``"conf"``.
        rho: threshold of checkpoint condition (1), in [0, 1].
        seed: seeds a CPU :class:`torch.Generator` for the random starts; the global RNG is never
            touched. Same seed, inputs, model and batch_size -> identical result.
        batch_size: samples attacked together.
        device: where to run; default the model's device. Results come back on ``x``'s device.
        progress: a tqdm bar over batches.
        stop_when_fooled: drop a sample from the attack once it is misclassified; default True for
            "ce" (a misclassified point is final) and False for "conf" (keep raising (17)).

    Guarantees of :meth:`perturb`: the model runs in eval mode during the attack and every
    submodule's previous mode is restored afterwards; no parameter ``.grad`` is touched; the result
    lies in the eps-ball around ``x`` and in [0, 1]; see the module docstring for which point is
    returned.

    Examples::

        >>> attack = APGD(model, norm="linf", eps=8 / 255, steps=100, objective="ce", seed=0)
        >>> pred = model(x).argmax(1)
        >>> x_adv = attack.perturb(x, pred)             # the worst point found per sample
        >>> robust = model(x_adv).argmax(1) == pred
        >>> x_adv, logits = attack.run(x, pred)         # and f(x_adv), from the attack's own pass
    """

    def __init__(self, model: nn.Module, norm: str = "linf", eps: float | None = None, steps: int = 40,
                 restarts: int = 1, objective: str = "ce", rho: float = 0.75, seed: int = 0,
                 batch_size: int = 500, device: str | torch.device | None = None,
                 progress: bool = False, stop_when_fooled: bool | None = None):
        if eps is None:
            raise ParamError("APGD needs eps (the threat-model radius)")
        self.model = model
        self.norm = choice(norm, "norm", NORMS)
        self.eps = non_negative(eps, "eps")
        self.steps = count(steps, "steps", min=0)
        self.restarts = count(restarts, "restarts")
        self.objective = choice(objective, "objective", OBJECTIVES)
        self.rho = probability(rho, "rho")
        self.seed = number(seed, "seed", integer=True)
        self.batch_size = count(batch_size, "batch_size")
        self.device = torch.device(device) if device is not None else None
        self.progress = progress
        self.stop_when_fooled = objective == "ce" if stop_when_fooled is None else bool(stop_when_fooled)
        self._checkpoints = checkpoints(self.steps)

    # ------------------------------------------------------------------ public API
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the worst point found for every sample (see the class and module docstrings).

        ``x``: inputs in [0, 1], shape [B, ...]; ``y``: the labels to attack, shape [B] (pass the
        model's own prediction F(x) to measure robustness regardless of accuracy)."""
        return self.run(x, y)[0]

    def run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`perturb` but also return the logits at the returned points (computed in the
        same forward pass that found them, so ``argmax`` agrees exactly with the attack's verdict)."""
        self._check_inputs(x, y)
        out_device = x.device
        device = self.device or model_device(self.model)
        x = x.detach().to(device, torch.float32)
        y = y.detach().to(device, torch.long)
        gen = torch.Generator().manual_seed(self.seed)
        xs, ls = [], []
        with eval_mode(self.model):
            for lo in self._batches(len(x)):
                xb, lb = self._attack_batch(x[lo:lo + self.batch_size], y[lo:lo + self.batch_size], gen)
                xs.append(xb)
                ls.append(lb)
        if not xs:
            return x.clone().to(out_device), torch.empty(0, device=out_device)
        return torch.cat(xs).contiguous().to(out_device), torch.cat(ls).to(out_device)

    # ------------------------------------------------------------------ internals
    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ParamError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise ParamError(f"y must have shape [{len(x)}], got {tuple(y.shape)}")

    def _batches(self, n: int) -> Iterator[int]:
        starts = range(0, n, self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            return iter(tqdm(starts, desc=f"APGD-{self.objective} {self.norm} eps={self.eps:g}",
                             unit="batch"))
        return iter(starts)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Images in channels_last when the model's convolutions are (faster on CPU, bench/);
        for a model in the default layout channels_last inputs were slower, so keep them as is."""
        if x.dim() == 4 and channels_last_model(self.model):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _forward(self, x: torch.Tensor, y: torch.Tensor, need_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(objective [B], gradient w.r.t. x or None, logits), all detached."""
        if not need_grad:
            with torch.no_grad():
                logits = self.model(x)
                return _objective(logits, y, self.objective), None, logits
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            f = _objective(logits, y, self.objective)
            (grad,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), grad.detach(), logits.detach()

    def _random_start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Linf: uniform noise rescaled to Linf norm eps; L2: a uniform direction of L2 norm eps
        (as in APGD); clamped to [0, 1]. Drawn on the CPU from ``gen``."""
        shape = (x.shape[0], *x.shape[1:])
        if self.norm == "linf":
            t = torch.rand(shape, generator=gen) * 2 - 1
            t = t / per_sample(t.flatten(1).abs().amax(1).clamp_min(1e-12), x)
        else:
            t = torch.randn(shape, generator=gen)
            t = t / per_sample(l2_norm(t).clamp_min(1e-12), x)
        return project(x + self.eps * t.to(x.device, x.dtype), x, self.eps, self.norm)

    def _next_iterate(self, s: Iterates, first: bool) -> torch.Tensor:
        """``z = P(x^k + eta s(grad))``; then ``x^(k+1) = z`` on the first step, else
        ``P(x^k + alpha (z - x^k) + (1 - alpha)(x^k - x^(k-1)))``."""
        with torch.no_grad():
            if self.norm == "linf":
                d = s.grad.sign()
            else:
                d = s.grad / per_sample(l2_norm(s.grad).clamp_min(1e-12), s.grad)
            z = project(s.x + per_sample(s.step, s.x) * d, s.x0, self.eps, self.norm)
            if first:
                return z
            return project(s.x + MOMENTUM * (z - s.x) + (1 - MOMENTUM) * (s.x - s.x_prev),
                           s.x0, self.eps, self.norm)

    def _attack_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._layout(x)
        with torch.no_grad():
            logits0 = self.model(x)
        worst = Worst(x.clone(), logits0.clone(), fooled=logits0.argmax(1) != y,
                      f=_objective(logits0, y, self.objective))
        if self.eps == 0 or self.steps == 0:
            return worst.x, worst.logits
        for _ in range(self.restarts):
            todo = (~worst.fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            self._run_once(x, y, todo, gen, worst)
        return worst.x, worst.logits

    def _run_once(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, gen: torch.Generator,
                  worst: Worst) -> None:
        """One APGD run (Algorithm 1) on the batch rows ``rows``; every iterate is offered to ``worst``."""
        # a random start in the ball, with its objective and gradient
        x0, y = x[rows], y[rows]
        x_start = self._random_start(x0, gen)
        f, grad, logits = self._forward(x_start, y, need_grad=True)
        fooled = worst.offer(rows, x_start, f, logits, y)
        s = Iterates.start(rows, x0, y, x_start, f, grad, self.eps)
        schedule = StepSizeSchedule(self._checkpoints, self.steps, self.rho)
        for k in range(self.steps):
            # samples already misclassified leave the run, if they may
            if self.stop_when_fooled and fooled.any():
                keep = (~fooled).nonzero().squeeze(1)
                if len(keep) == 0:
                    return
                s = s.take(keep)
            # a step, with momentum from the second on
            s.x_prev, s.x = s.x, self._next_iterate(s, first=k == 0)
            # evaluate the new iterate (the gradient at the last one is never used)
            f, grad, logits = self._forward(s.x, s.y, need_grad=k < self.steps - 1)
            fooled = worst.offer(s.rows, s.x, f, logits, s.y)
            with torch.no_grad():
                s.observe(f, grad)
                # at a checkpoint, halve the step size where progress stalled
                halve = schedule.halve(k + 1, s)
                if halve is not None:
                    s.checkpoint(halve)


def worst_case_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                           norm: str = "linf", steps: int = 40, restarts: int = 1,
                           objective: str = "ce", seed: int = 0, batch_size: int = 500,
                           progress: bool = False, device: str | torch.device | None = None,
                           stop_when_fooled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :class:`APGD` and return, per sample, ``(argmax f(x'), softmax(f(x'))_y)`` at the
    returned point ``x'`` (a LongTensor and a FloatTensor on ``x``'s device).

    The logits are those of the forward pass in which the attack found ``x'``, so
    ``adv_pred != y`` exactly where the attack reports success. ``eps == 0`` gives the natural
    prediction and the natural probability of ``y``."""
    attack = APGD(model, norm=norm, eps=eps, steps=steps, restarts=restarts, objective=objective,
                  seed=seed, batch_size=batch_size, device=device, progress=progress,
                  stop_when_fooled=stop_when_fooled)
    _, logits = attack.run(x, y)
    if len(logits) == 0:
        return torch.empty(0, dtype=torch.long, device=x.device), torch.empty(0, device=x.device)
    p_y = F.softmax(logits.float(), dim=1).gather(1, y.to(logits.device).long()[:, None]).squeeze(1)
    return logits.argmax(1), p_y
