"""Certified-robustness objectives for randomized smoothing: (8) L_noise, (9) MACER's radius, (7) CRA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .config import LossConfig


# ----------------------------------------------------------------------------- (8) noise
def noisy_copies(x: torch.Tensor, k: int, sigma: float, generator) -> torch.Tensor:
    """k Gaussian copies of each input, laid out [x_0 k times, x_1 k times, ...] (unclamped, as in
    randomized smoothing's definition). The noise comes from ``generator`` when one is given, drawn
    on the generator's device and moved to ``x``'s (as in ``attacks.pgd.random_init``), else from
    torch's global RNG."""
    xr = x.repeat_interleave(k, dim=0)
    if generator is None:
        return xr + sigma * torch.randn_like(xr)
    return xr + sigma * torch.randn(xr.shape, generator=generator, device=generator.device).to(x.device)


def noise_loss(model, x, y, cfg: LossConfig, generator=None):
    """(8): L_noise = CE(f(x + eta), y), eta ~ N(0, sigma^2 I) (Gaussian data augmentation)."""
    k = cfg.k_noise
    logits = model(noisy_copies(x, k, cfg.sigma, generator))
    loss = F.cross_entropy(logits, y.repeat_interleave(k))
    return loss, {"noise_ce": loss.item()}


# ----------------------------------------------------------------------------- (9), (7) CRA
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_LOG_HALF = math.log(0.5)
_TAIL_LOG_Q = -30.0  # below this log q, PhiInv comes from Newton's method on log Phi (q < 1e-13)


def _ndtri_exp_value(log_q: torch.Tensor) -> torch.Tensor:
    """PhiInv(exp(log_q)) for log_q <= log(1/2), without gradient. Above ``_TAIL_LOG_Q`` it is
    ``ndtri(exp(log_q))``; below, where exp(log_q) would lose precision or underflow, it starts from
    the tail expansion log Phi(z) ~ -z^2/2 - log(-z) - log sqrt(2 pi) and takes 4 Newton steps on
    log Phi(z) = log_q (relative error about 1e-7 in float32, 1e-15 in float64, for any log_q)."""
    with torch.no_grad():
        moderate = torch.special.ndtri(log_q.exp())
        t = -2 * log_q.clamp(max=_TAIL_LOG_Q)
        z = -torch.sqrt(t - torch.log(t) - 2 * _LOG_SQRT_2PI)
        for _ in range(4):
            log_cdf = torch.special.log_ndtr(z)
            z = z - (log_cdf - log_q) * torch.exp(log_cdf + z * z / 2 + _LOG_SQRT_2PI)  # / (log Phi)'
        return torch.where(log_q > _TAIL_LOG_Q, moderate, z)


class _NdtriExp(torch.autograd.Function):
    """z = PhiInv(exp(log_q)), differentiable in log_q: dz / dlog_q = q / phi(z), evaluated as
    exp(log_q + z^2/2 + log sqrt(2 pi)) so that neither q nor phi(z) has to be representable."""

    @staticmethod
    def forward(ctx, log_q: torch.Tensor) -> torch.Tensor:
        z = _ndtri_exp_value(log_q)
        ctx.save_for_backward(log_q, z)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        log_q, z = ctx.saved_tensors
        return grad * torch.exp(log_q + z * z / 2 + _LOG_SQRT_2PI)


def _phi_inv(log_p: torch.Tensor, log_1mp: torch.Tensor) -> torch.Tensor:
    """PhiInv(p) from log p and log(1 - p): PhiInv(p) if p <= 1/2, else -PhiInv(1 - p), so the
    argument of the inverse is always the smaller tail and never suffers 1 - p's cancellation."""
    lower = _NdtriExp.apply(log_p.clamp(max=_LOG_HALF))
    upper = -_NdtriExp.apply(log_1mp.clamp(max=_LOG_HALF))
    return torch.where(log_p <= log_1mp, lower, upper)


def macer_radius(logits: torch.Tensor, sigma: float, inv_temp: float) -> torch.Tensor:
    """(9) MACER's differentiable certified radius from k noisy logits [B, k, C]:
    CR = sigma / 2 * (PhiInv(p_top) - PhiInv(p_second)), p = mean_j softmax(G * f(x + eta_j)).

    The top class of the smoothed soft classifier is the one G would certify (see module doc).

    Numerics: the result is the exact (9), finite and with its exact gradient for any finite
    logits. log p comes from a log-sum-exp over the k draws, log(1 - p_c) from a log-sum-exp over
    the other classes (no 1 - p cancellation), and PhiInv is evaluated from those logs
    (:func:`_phi_inv`). So a confidently wrong point (wrong-class margin m at inverse temperature
    G, p_second ~ exp(-G m)) keeps a radius that grows like sigma * sqrt(2 G m) and a gradient of
    order sigma * G / sqrt(2 G m) that lowers it. Clamping p to [1e-6, 1 - 1e-6] instead would make
    the gradient exactly zero from G m ~ 14 on, i.e. on the robust-inaccurate points the CRA term
    (7) exists to push on; MACER's code drops the terms whose icdf is non-finite and hinges at
    gamma, which the authors' CRA does not use."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_p = torch.logsumexp(F.log_softmax(inv_temp * logits, dim=2), dim=1) - math.log(logits.shape[1])
    log_top2, idx = log_p.topk(2, dim=1)
    log_rest = torch.stack([log_p.scatter(1, idx[:, i:i + 1], float("-inf")).logsumexp(1)
                            for i in range(2)], dim=1)  # log(1 - p) of the top two classes
    z = _phi_inv(log_top2, log_rest)
    return sigma / 2 * (z[:, 0] - z[:, 1])


def cra_loss(model, x, y, cfg: LossConfig, generator=None):
    """(7): L_CRA = beta * L_noise + (1/k) sum_j (1 - f(x + eta_j)_y) * CR(f, x).

    Minimising the soft-inaccuracy-weighted radius removes certified robustness where the model is
    inaccurate; beta * L_noise keeps it accurate under noise. One set of k draws serves both terms."""
    k = cfg.k
    logits = model(noisy_copies(x, k, cfg.sigma, generator)).view(len(x), k, -1)
    if cfg.noise_ce == "mean_logits":
        ce = F.cross_entropy(logits.mean(1), y)
    else:
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(k))
    qualifier = 1 - F.softmax(logits, dim=2).gather(2, y[:, None, None].expand(-1, k, 1)).squeeze(2).mean(1)
    radius = macer_radius(logits, cfg.sigma, cfg.inv_temp)
    cr = (qualifier * radius).mean()
    return cfg.beta * ce + cr, {"noise_ce": ce.item(), "radius": radius.mean().item(), "cra": cr.item()}
