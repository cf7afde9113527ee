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
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParamError
from .pgd import check_eps, check_norm, check_steps, l2_norm, project

OBJECTIVES = ("ce", "conf")
MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """The APGD checkpoints ``w_1 < w_2 < ... <= steps`` (``w_j = ceil(p_j * steps)``, deduplicated).

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; for 100 steps this
    gives 22, 41, 57, 70, 80, 87, 93, 99 as in the paper."""
    ws: list[int] = []
    p_prev, p = 0.0, 0.22
    while p <= 1.0 + 1e-9:
        w = math.ceil(p * steps - 1e-9)
        if w >= 1 and (not ws or w > ws[-1]):
            ws.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return ws


def _objective(logits: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-sample objective to maximise: CE to y, or log max_{c != y} softmax_c (monotone in (17))."""
    if objective == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    logp = F.log_softmax(logits, dim=1)
    return logp.scatter(1, y[:, None], float("-inf")).max(1).values


def max_other_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(17): ``max_{c != y} softmax(logits)_c`` per row."""
    return F.softmax(logits, dim=1).scatter(1, y[:, None], 0.0).max(1).values


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _channels_last_model(model: nn.Module) -> bool:
    cl = torch.channels_last
    return any(p.dim() == 4 and p.is_contiguous(memory_format=cl) and not p.is_contiguous()
               for p in model.parameters())


class _EvalMode:
    """Put every submodule in eval mode; restore each submodule's own previous mode on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            m.training = mode


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

    Guarantees of :meth:`perturb`: the model runs in eval mode during the attack and every
    submodule's previous mode is restored afterwards; no parameter ``.grad`` is touched; the result
    lies in the eps-ball around ``x`` and in [0, 1]; see the module docstring for which point is
    returned.
    """

    def __init__(self, model: nn.Module, norm: str = "linf", eps: float | None = None, steps: int = 40,
                 restarts: int = 1, objective: str = "ce", rho: float = 0.75, seed: int = 0,
                 batch_size: int = 500, device: str | torch.device | None = None,
                 progress: bool = False, stop_when_fooled: bool | None = None):
        if eps is None:
            raise ParamError("APGD needs eps (the threat-model radius)")
        self.model = model
        self.norm = check_norm(norm)
        self.eps = check_eps(eps)
        self.steps = check_steps(steps)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ParamError(f"restarts must be an integer >= 1, got {restarts!r}")
        self.restarts = restarts
        if objective not in OBJECTIVES:
            raise ParamError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 <= rho <= 1:
            raise ParamError(f"rho must be a number in [0, 1], got {rho!r}")
        self.rho = float(rho)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParamError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParamError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self.progress = progress
        # "ce": a misclassified point is final, so the sample leaves the batch (the speed-up).
        # "conf": by default keep raising the other-class confidence of misclassified samples;
        # ``stop_when_fooled=True`` drops them too (enough when only "was F(x) kept?" matters).
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
        device = self.device or _model_device(self.model)
        x = x.detach().to(device, torch.float32)
        y = y.detach().to(device, torch.long)
        gen = torch.Generator().manual_seed(self.seed)
        xs, ls = [], []
        with _EvalMode(self.model):
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
        if x.dim() == 4 and _channels_last_model(self.model):
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
            t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        else:
            t = torch.randn(shape, generator=gen)
            t = t / l2_norm(t).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        return project(x + self.eps * t.to(x.device, x.dtype), x, self.eps, self.norm)

    def _step(self, x: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            d = grad.sign()
        else:
            d = grad / l2_norm(grad).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return x + step.view(-1, *([1] * (x.dim() - 1))) * d

    def _attack_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._layout(x)
        with torch.no_grad():
            logits0 = self.model(x)
        # The returned point per sample, whether it is misclassified, and its objective.
        out_x = x.clone()
        out_logits = logits0.clone()
        out_fooled = logits0.argmax(1) != y
        out_f = _objective(logits0, y, self.objective)
        if self.eps == 0 or self.steps == 0:
            return out_x, out_logits
        for _ in range(self.restarts):
            todo = (~out_fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            self._single_run(x, y, todo, gen, out_x, out_logits, out_fooled, out_f)
        return out_x, out_logits

    def _single_run(self, x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor,
                    gen: torch.Generator, out_x: torch.Tensor, out_logits: torch.Tensor,
                    out_fooled: torch.Tensor, out_f: torch.Tensor) -> None:
        """One APGD run on the samples ``idx``; updates the ``out_*`` tensors in place."""
        eps, n_steps = self.eps, self.steps
        x0, y = x_all[idx], y_all[idx]
        gidx = idx  # global (within the batch) index of each active sample

        def record(x_cur: torch.Tensor, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            """Offer the current iterates as returned points; return the 'fooled now' mask."""
            fooled = logits.argmax(1) != y
            prev_fooled, prev_f = out_fooled[gidx], out_f[gidx]
            better = (fooled & ~prev_fooled) | ((fooled == prev_fooled) & (f > prev_f))
            if better.any():
                b = better.nonzero().squeeze(1)
                g = gidx[b]
                out_x[g] = x_cur[b]
                out_logits[g] = logits[b]
                out_fooled[g] = fooled[b]
                out_f[g] = f[b]
            return fooled

        x_cur = self._random_start(x0, gen)
        f_cur, grad, logits = self._forward(x_cur, y, need_grad=True)
        fooled = record(x_cur, f_cur, logits)

        x_prev = x_cur.clone()
        x_best, f_best, grad_best = x_cur.clone(), f_cur.clone(), grad.clone()
        step = torch.full((len(x0),), 2.0 * eps, device=x0.device)
        n_incr = torch.zeros(len(x0), device=x0.device)           # increases since last checkpoint
        f_best_last = f_best.clone()                               # f_max at the last checkpoint
        halved_last = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        ckpts = [w for w in self._checkpoints if w < n_steps]     # a checkpoint at N changes nothing
        last_w = 0

        for k in range(n_steps):
            if self.stop_when_fooled and fooled.any():
                keep = (~fooled).nonzero().squeeze(1)
                if len(keep) == 0:
                    return
                x0, y, gidx = x0[keep], y[keep], gidx[keep]
                x_cur, x_prev, grad, f_cur = x_cur[keep], x_prev[keep], grad[keep], f_cur[keep]
                x_best, f_best, grad_best = x_best[keep], f_best[keep], grad_best[keep]
                step, n_incr, f_best_last = step[keep], n_incr[keep], f_best_last[keep]
                halved_last = halved_last[keep]
            with torch.no_grad():
                z = project(self._step(x_cur, grad, step), x0, eps, self.norm)
                if k == 0:
                    x_new = z
                else:
                    x_new = project(x_cur + MOMENTUM * (z - x_cur) + (1 - MOMENTUM) * (x_cur - x_prev),
                                    x0, eps, self.norm)
            x_prev, x_cur = x_cur, x_new
            # The gradient at the last iterate is never used: forward only.
            f_new, g_new, logits = self._forward(x_cur, y, need_grad=k < n_steps - 1)
            fooled = record(x_cur, f_new, logits)
            with torch.no_grad():
                n_incr += (f_new > f_cur).float()
                f_cur = f_new
                if g_new is not None:
                    grad = g_new
                improved = f_new > f_best
                if improved.any():
                    f_best = torch.where(improved, f_new, f_best)
                    m = improved.view(-1, *([1] * (x_cur.dim() - 1)))
                    x_best = torch.where(m, x_cur, x_best)
                    if g_new is not None:
                        grad_best = torch.where(m, g_new, grad_best)
                if ckpts and k + 1 == ckpts[0]:
                    w = ckpts.pop(0)
                    cond1 = n_incr < self.rho * (w - last_w)
                    cond2 = ~halved_last & (f_best <= f_best_last)
                    halve = cond1 | cond2
                    if halve.any():
                        step = torch.where(halve, step / 2, step)
                        m = halve.view(-1, *([1] * (x_cur.dim() - 1)))
                        x_cur = torch.where(m, x_best, x_cur)
                        grad = torch.where(m, grad_best, grad)
                        f_cur = torch.where(halve, f_best, f_cur)
                    halved_last = halve
                    f_best_last = f_best.clone()
                    n_incr.zero_()
                    last_w = w


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
