"""APGD's bookkeeping, apart from its loop (:mod:`.apgd`): the checkpoints and the step-size rule of
Section 3.2 of the APGD paper, one run's per-sample state, and the point returned per sample."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .common import per_sample


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


@dataclass
class Iterates:
    """The per-sample state of one APGD run. Row i belongs to row ``rows[i]`` of the attacked batch;
    :meth:`take` drops the rows of samples that leave the run."""

    rows: torch.Tensor         # the row of each sample in the batch
    x0: torch.Tensor           # clean point
    y: torch.Tensor            # label attacked
    x: torch.Tensor            # iterate x^k
    x_prev: torch.Tensor       # iterate x^(k-1)
    grad: torch.Tensor         # gradient of the objective at x^k
    f: torch.Tensor            # objective at x^k
    x_best: torch.Tensor       # best iterate so far, its objective and gradient
    f_best: torch.Tensor
    grad_best: torch.Tensor
    step: torch.Tensor         # step size eta
    n_incr: torch.Tensor       # steps that increased the objective since the last checkpoint
    f_best_last: torch.Tensor  # f_best at the last checkpoint
    halved_last: torch.Tensor  # whether eta was halved at the last checkpoint

    @classmethod
    def start(cls, rows: torch.Tensor, x0: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
              f: torch.Tensor, grad: torch.Tensor, eps: float) -> Iterates:
        """The state at the random start ``x`` (objective ``f``, gradient ``grad``): eta = 2 eps."""
        n, dev = len(x0), x0.device
        return cls(rows, x0, y, x, x.clone(), grad, f, x.clone(), f.clone(), grad.clone(),
                   step=torch.full((n,), 2.0 * eps, device=dev), n_incr=torch.zeros(n, device=dev),
                   f_best_last=f.clone(), halved_last=torch.zeros(n, dtype=torch.bool, device=dev))

    def take(self, keep: torch.Tensor) -> Iterates:
        """The state of the samples ``keep`` (positions in this state) only."""
        return Iterates(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def observe(self, f_new: torch.Tensor, g_new: torch.Tensor | None) -> None:
        """Account for the objective ``f_new`` (and gradient, None after the last step) at the new
        iterate ``x``: count increases, keep the best point."""
        self.n_incr += (f_new > self.f).float()
        self.f = f_new
        if g_new is not None:
            self.grad = g_new
        improved = f_new > self.f_best
        if improved.any():
            self.f_best = torch.where(improved, f_new, self.f_best)
            m = per_sample(improved, self.x)
            self.x_best = torch.where(m, self.x, self.x_best)
            if g_new is not None:
                self.grad_best = torch.where(m, g_new, self.grad_best)

    def checkpoint(self, halve: torch.Tensor) -> None:
        """At a checkpoint: halve eta where ``halve`` and restart those samples from their best point
        (with its gradient); start counting afresh for the next checkpoint."""
        if halve.any():
            self.step = torch.where(halve, self.step / 2, self.step)
            m = per_sample(halve, self.x)
            self.x = torch.where(m, self.x_best, self.x)
            self.grad = torch.where(m, self.grad_best, self.grad)
            self.f = torch.where(halve, self.f_best, self.f)
        self.halved_last = halve
        self.f_best_last = self.f_best.clone()
        self.n_incr.zero_()


class StepSizeSchedule:
    """When APGD halves a sample's step size: at each checkpoint ``w_j < steps`` (one at ``steps``
    would change nothing), where (1) fewer than ``rho * (w_j - w_{j-1})`` of the steps since the last
    checkpoint increased the objective, or (2) eta was not halved at ``w_{j-1}`` and the best
    objective has not grown since."""

    def __init__(self, ckpts: list[int], steps: int, rho: float):
        self.pending = [w for w in ckpts if w < steps]
        self.last = 0
        self.rho = rho

    def halve(self, done: int, s: Iterates) -> torch.Tensor | None:
        """After ``done`` steps: None between checkpoints; at a checkpoint, the mask of the samples
        of ``s`` whose step size halves."""
        if not self.pending or done != self.pending[0]:
            return None
        w = self.pending.pop(0)
        cond1 = s.n_incr < self.rho * (w - self.last)
        cond2 = ~s.halved_last & (s.f_best <= s.f_best_last)
        self.last = w
        return cond1 | cond2


@dataclass
class Worst:
    """The point returned per sample of a batch: the point, its logits, whether it is misclassified
    and its objective. A misclassified point beats one that is not; between equals, the higher
    objective wins."""

    x: torch.Tensor
    logits: torch.Tensor
    fooled: torch.Tensor
    f: torch.Tensor

    def offer(self, rows: torch.Tensor, x: torch.Tensor, f: torch.Tensor, logits: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        """Offer the points ``x`` (objective ``f``, ``logits``) for the batch rows ``rows``, keep the
        better ones; return where ``x`` is misclassified."""
        fooled = logits.argmax(1) != y
        prev_fooled, prev_f = self.fooled[rows], self.f[rows]
        better = (fooled & ~prev_fooled) | ((fooled == prev_fooled) & (f > prev_f))
        if better.any():
            b = better.nonzero().squeeze(1)
            g = rows[b]
            self.x[g] = x[b]
            self.logits[g] = logits[b]
            self.fooled[g] = fooled[b]
            self.f[g] = f[b]
        return fooled
