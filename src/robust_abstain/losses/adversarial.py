"""Empirical-robustness objectives: CE (the core model), (5) TRADES, (4) ERA, MART, (18) DGA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks.pgd import pgd
from .common import _attack, eval_mode, kl_div, most_likely_other, soft_inaccuracy
from .config import LossConfig


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
