"""Training objectives, each named after its equation in the paper.

Every loss has the signature ``loss(model, x, y, cfg, generator) -> (scalar, stats)``, where
``cfg`` is a validated :class:`LossConfig` and ``stats`` holds detached per-term means for logging.
Attacks inside a loss run with the model in eval mode (BatchNorm statistics frozen) and the loss
forward passes in the model's own mode, as in TRADES.

Choices where the authors' code departs from the paper (see DESIGN.md), all documented here:

* ERA inner attacks: ``era_variant="paper"`` (default) runs TRADES's KL-maximising PGD for (5) and
  a separate PGD towards the most likely other class for the ERA term of (4);
  ``era_variant="shared"`` is the authors' shortcut: one PGD on the predicted label, its point used
  for both terms (about half the cost).
* TRADES KL: ``kl_reduction="sum"`` (TRADES and the paper: summed over classes, mean over the
  batch) or ``"mean"`` (the authors' code: also averaged over classes, i.e. gamma / num_classes).
* The soft qualifier 1 - f(x)_y is *not* detached, as in the authors' code: its gradient only
  pushes towards accuracy. MART's weight 1 - f(x)_y is not detached either, as in MART's code.
* CRA radius (9): the paper writes it for the label y, which for a misclassified point is negative
  and minimising it would make the point *more* robustly wrong. We follow the authors' code and
  MACER's intent: the radius of the smoothed soft classifier's top class against its runner-up,
  i.e. the radius G is certified with, which is what robust inaccuracy measures. No MACER gamma
  hinge and no mask to correctly classified points (the soft qualifier does that job). PhiInv is
  evaluated in log space, so the radius keeps its exact value and gradient however confident the
  smoothed classifier is (see :func:`macer_radius`).
* L_noise (8): CE of each noisy copy (Cohen et al.'s Gaussian augmentation), averaged over the k
  draws; the authors' CE of the mean logits is available as ``noise_ce="mean_logits"``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .attacks.pgd import pgd
from .errors import ParamError
from .params import choice, count, non_negative, positive

Stats = dict[str, float]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "LossConfig", "torch.Generator | None"],
                  tuple[torch.Tensor, Stats]]


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    beta: float = 1.0            # weight of the robust term (see each loss for its meaning)
    eps: float = 0.0             # training threat-model radius
    norm: str = "linf"
    pgd_steps: int = 10
    step_size: float | None = None   # default 2.5 * eps / steps
    gamma: float = 6.0           # TRADES KL weight inside ERA and DGA (the paper's gamma = 6)
    kl_reduction: str = "sum"    # "sum" (TRADES, paper) | "mean" (authors' code)
    era_variant: str = "paper"   # "paper" (separate attacks) | "shared" (authors' code)
    sigma: float = 0.25          # Gaussian noise std for noise / CRA
    k: int = 16                  # noise draws per input for CRA (and noise, default 1)
    k_noise: int = 1
    inv_temp: float = 4.0        # MACER's inverse softmax temperature G in (9)
    noise_ce: str = "per_draw"   # "per_draw" | "mean_logits" (authors' CRA classification term)

    @classmethod
    def from_params(cls, p: dict, prefix: str = "loss") -> "LossConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(p) - known)
        if unknown:
            raise ParamError(f"{prefix}: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**p)
        cfg.validate(prefix)
        return cfg

    def validate(self, prefix: str = "loss") -> None:
        choice(self.name, f"{prefix}.name", LOSSES)
        non_negative(self.beta, f"{prefix}.beta")
        non_negative(self.eps, f"{prefix}.eps")
        choice(self.norm, f"{prefix}.norm", ["linf", "l2"])
        count(self.pgd_steps, f"{prefix}.pgd_steps", min=0)
        if self.step_size is not None:
            positive(self.step_size, f"{prefix}.step_size")
        non_negative(self.gamma, f"{prefix}.gamma")
        choice(self.kl_reduction, f"{prefix}.kl_reduction", ["sum", "mean"])
        choice(self.era_variant, f"{prefix}.era_variant", ["paper", "shared"])
        positive(self.sigma, f"{prefix}.sigma")
        count(self.k, f"{prefix}.k")
        count(self.k_noise, f"{prefix}.k_noise")
        positive(self.inv_temp, f"{prefix}.inv_temp")
        choice(self.noise_ce, f"{prefix}.noise_ce", ["per_draw", "mean_logits"])
        if self.name in ("trades", "era", "mart", "dga") and self.eps <= 0:
            raise ParamError(f"{prefix}.eps must be > 0 for the adversarial loss {self.name!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run attacks with the model in eval mode; restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _attack(model: nn.Module, objective, x: torch.Tensor, cfg: LossConfig, generator,
            maximize: bool = True) -> torch.Tensor:
    with eval_mode(model):
        return pgd(objective, x, cfg.eps, cfg.pgd_steps, step_size=cfg.step_size, norm=cfg.norm,
                   random_start=True, generator=generator, maximize=maximize)


def kl_div(logits_nat: torch.Tensor, logits_adv: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Per-sample KL(f(x) || f(x')), summed (TRADES) or averaged (authors) over classes."""
    p = F.softmax(logits_nat, dim=1)
    kl = (p * (F.log_softmax(logits_nat, dim=1) - F.log_softmax(logits_adv, dim=1))).sum(1)
    return kl / logits_nat.shape[1] if reduction == "mean" else kl


def most_likely_other(logits: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """argmax_{c != exclude} logits_c, per row."""
    return logits.scatter(1, exclude[:, None], float("-inf")).argmax(1)


def soft_inaccuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The soft qualifier 1 - f(x)_y that replaces the indicator 1{F(x) != y} in (3)."""
    return 1 - F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)


# ----------------------------------------------------------------------------- standard training
def ce_loss(model, x, y, cfg: LossConfig, generator=None):
    """Standard cross-entropy CE(f(x), y): the core model's objective."""
    loss = F.cross_entropy(model(x), y)
    return loss, {"ce": loss.item()}


# ----------------------------------------------------------------------------- (5) TRADES
def trades_attack(model, x, logits_nat, cfg: LossConfig, generator=None) -> torch.Tensor:
    """x' = argmax_{x' in B_eps(x)} KL(f(x) || f(x')) by PGD (TRADES's inner maximisation)."""
    target = logits_nat.detach()
    return _attack(model, lambda xa: kl_div(target, model(xa), cfg.kl_reduction), x, cfg, generator)


def trades_terms(model, x, y, cfg: LossConfig, gamma: float, generator=None, x_adv=None):
    """(5): L_TRADES = CE(f(x), y) + gamma * max_{x'} KL(f(x) || f(x')).

    Returns (loss, logits_nat, x_adv, stats). A given ``x_adv`` is used as the inner maximiser
    (no attack, and no eval-mode forward of x, is run then)."""
    if x_adv is None:
        with torch.no_grad(), eval_mode(model):
            logits_ref = model(x)
        x_adv = trades_attack(model, x, logits_ref, cfg, generator)
    logits_nat = model(x)
    kl = kl_div(logits_nat, model(x_adv), cfg.kl_reduction).mean()
    ce = F.cross_entropy(logits_nat, y)
    return ce + gamma * kl, logits_nat, x_adv, {"ce": ce.item(), "kl": kl.item()}


def trades_loss(model, x, y, cfg: LossConfig, generator=None):
    """TRADES (5) on its own; ``beta`` is TRADES's KL weight (the paper's gamma, 6 by default)."""
    loss, _, _, st = trades_terms(model, x, y, cfg, cfg.beta, generator)
    return loss, st


# ----------------------------------------------------------------------------- (4) ERA
def era_attack(model, x, pred, cfg: LossConfig, generator=None) -> torch.Tensor:
    """The inner minimisation of (4): PGD towards the most likely class other than F(x), i.e.
    minimise CE(f(x'), argmax_{c != F(x)} f(x')_c) over B_eps(x). One non-robust point suffices."""
    def objective(xa):
        logp = F.log_softmax(model(xa), dim=1)
        return logp.scatter(1, pred[:, None], float("-inf")).max(1).values  # log of max other prob
    return _attack(model, objective, x, cfg, generator, maximize=True)


def era_term(model, x_adv, pred, qualifier) -> torch.Tensor:
    """(1 - f(x)_y) * CE(f(x'), argmax_{c != F(x)} f(x')_c), per sample."""
    logits_adv = model(x_adv)
    target = most_likely_other(logits_adv.detach(), pred)
    return qualifier * F.cross_entropy(logits_adv, target, reduction="none")


def era_loss(model, x, y, cfg: LossConfig, generator=None):
    """(4): L_ERA = beta * L_TRADES + (1 - f(x)_y) * min_{x' in B} CE(f(x'), argmax_{c != F(x)} f(x')_c).

    Small beta puts more weight on removing robustness where the model is inaccurate."""
    with torch.no_grad(), eval_mode(model):
        pred = model(x).argmax(1)
    if cfg.era_variant == "shared":  # authors: one PGD on the predicted label for both terms
        x_shared = _attack(model, lambda xa: F.cross_entropy(model(xa), pred, reduction="none"),
                           x, cfg, generator)
        trades, logits_nat, _, st = trades_terms(model, x, y, cfg, cfg.gamma, generator, x_adv=x_shared)
        x_era = x_shared
    else:
        trades, logits_nat, _, st = trades_terms(model, x, y, cfg, cfg.gamma, generator)
        x_era = era_attack(model, x, pred, cfg, generator)
    era = era_term(model, x_era, pred, soft_inaccuracy(logits_nat, y)).mean()
    return cfg.beta * trades + era, {**st, "trades": trades.item(), "era": era.item()}


# ----------------------------------------------------------------------------- MART (baseline)
def mart_loss(model, x, y, cfg: LossConfig, generator=None):
    """MART (Wang et al. 2020): BCE(f(x'), y) + beta * KL(f(x) || f(x')) * (1 - f(x)_y), x' by PGD-CE.

    BCE(p, y) = -log p_y - log(1 - max_{c != y} p_c). The weight 1 - f(x)_y is not detached (as in
    MART's reference code): its gradient raises f(x)_y where the adversarial KL is large."""
    with eval_mode(model):
        x_adv = pgd(lambda xa: F.cross_entropy(model(xa), y, reduction="none"), x, cfg.eps,
                    cfg.pgd_steps, step_size=cfg.step_size, norm=cfg.norm, generator=generator)
    logits_nat, logits_adv = model(x), model(x_adv)
    p_adv = F.softmax(logits_adv, dim=1)
    other = p_adv.scatter(1, y[:, None], 0).max(1).values
    bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - other)
    kl = kl_div(logits_nat, logits_adv, "sum") * soft_inaccuracy(logits_nat, y)
    bce_m, kl_m = bce.mean(), kl.mean()
    return bce_m + cfg.beta * kl_m, {"bce": bce_m.item(), "kl": kl_m.item()}


# ----------------------------------------------------------------------------- (18) DGA
def dga_loss(model, x, y, cfg: LossConfig, generator=None):
    """(18) ablation: beta * L_TRADES - log(f(x)_y + max_{c != F(x)} f(x')_c), a deep-gamblers'
    style abstain loss where non-robustness plays the abstain option. As in the authors' code the
    two probabilities come from one softmax over [f(x) logits, the x' logit of that class], so
    their sum stays <= 1."""
    with torch.no_grad(), eval_mode(model):
        pred = model(x).argmax(1)
    trades, logits_nat, _, st = trades_terms(model, x, y, cfg, cfg.gamma, generator)
    x_era = era_attack(model, x, pred, cfg, generator)
    logits_adv = model(x_era)
    target = most_likely_other(logits_adv.detach(), pred)
    joint = F.softmax(torch.cat([logits_nat, logits_adv.gather(1, target[:, None])], dim=1), dim=1)
    gamble = -torch.log(joint.gather(1, y[:, None]).squeeze(1) + joint[:, -1] + 1e-12).mean()
    return cfg.beta * trades + gamble, {**st, "trades": trades.item(), "gamble": gamble.item()}


# ----------------------------------------------------------------------------- (8) noise
def _noisy(x: torch.Tensor, k: int, sigma: float, generator) -> torch.Tensor:
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
    logits = model(_noisy(x, k, cfg.sigma, generator))
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
    logits = model(_noisy(x, k, cfg.sigma, generator)).view(len(x), k, -1)
    if cfg.noise_ce == "mean_logits":
        ce = F.cross_entropy(logits.mean(1), y)
    else:
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(k))
    qualifier = 1 - F.softmax(logits, dim=2).gather(2, y[:, None, None].expand(-1, k, 1)).squeeze(2).mean(1)
    radius = macer_radius(logits, cfg.sigma, cfg.inv_temp)
    cr = (qualifier * radius).mean()
    return cfg.beta * ce + cr, {"noise_ce": ce.item(), "radius": radius.mean().item(), "cra": cr.item()}


LOSSES: dict[str, LossFn] = {
    "ce": ce_loss, "trades": trades_loss, "era": era_loss, "mart": mart_loss, "dga": dga_loss,
    "noise": noise_loss, "cra": cra_loss,
}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ParamError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
