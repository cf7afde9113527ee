"""Empirical-robustness objectives: CE (the core model), (5) TRADES, (4) ERA, MART, (18) DGA, MMA."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..attacks.common import per_sample
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


# ----------------------------------------------------------------------------- MMA (baseline)
def soft_logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log sum_{c != y} exp f(x)_c - f(x)_y per sample: the smooth margin loss AN-PGD ascends.

    It bounds the logit margin max_{c != y} f(x)_c - f(x)_y from above, so it is < 0 only where
    F(x) = y."""
    others = torch.logsumexp(logits.scatter(1, y[:, None], float("-inf")), dim=1)
    return others - logits.gather(1, y[:, None]).squeeze(1)


#: AN-PGD's second PGD runs at each point's first margin estimate, a multiple of d_max / AN_PGD_LEVELS
#: (log2 of it bisection steps): one PGD call per level, so at most this many calls.
AN_PGD_LEVELS = 4


def _on_segment(x: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x + t u per sample; clamped to [0, 1] only against float rounding (x and x + radius u are in it)."""
    return (x + per_sample(t, x) * u).clamp(0.0, 1.0)


def _first_fooling(model, x, y, x_far, radius, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection on the segment x + t u, u = (x_far - x) / radius, t in [0, radius] (per sample), for
    the smallest t with F(x + t u) != y: returns (t, u). t only takes values seen to fool f, so
    t < radius means x + t u is misclassified; t = radius where no tested t fooled f."""
    u = (x_far - x) / per_sample(radius, x)
    lo, hi = torch.zeros_like(radius), radius.clone()
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            fooled = model(_on_segment(x, u, mid)).argmax(1) != y
            hi, lo = torch.where(fooled, mid, hi), torch.where(fooled, lo, mid)
    return hi, u


def an_pgd(model, x, y, cfg: LossConfig, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """MMA's AN-PGD (Ding et al. 2020, Algorithm 1): the shortest successful perturbation of each
    correctly classified ``x``, searched up to the radius ``cfg.d_max``; run in eval mode.

    1. PGD in B_{d_max}(x) ascends the soft logit margin (``cfg.pgd_steps`` steps, random start,
       step size ``cfg.step_size``, by default 2.5 * radius / steps as in the authors' code): x_d.
       On the segment from x to x_d (in [0, 1], as a convex combination), 2 bisection steps find
       the first estimate d1 on the grid of multiples of d_max / AN_PGD_LEVELS (:func:`_first_fooling`).
    2. PGD again, at the radius d1, and ``cfg.mma_search_steps`` bisection steps on its segment;
       the shorter of the two successful perturbations is kept.

    Returns ``(x_star, margin)``, x_star = x + delta* in [0, 1] with ||delta*|| <= margin. Where
    ``margin < d_max``, F(x_star) != y and margin, the estimate of the margin d(x, y), lies within
    d1 / 2^n (n = ``mma_search_steps``) above a crossing of the decision boundary on the second
    segment (for a linear model, whose PGD points are corners towards its boundary, that crossing is
    the exact Linf distance), or, where the second PGD found nothing shorter, margin = d1. Where
    nothing shorter than d_max fooled f, margin = d_max.

    Why two PGDs: PGD at a radius far above the margin tends to find a direction that crosses the
    boundary late, so it overestimates margins. The authors run PGD at each example's margin
    estimate from the previous epoch, a per-example memory that a loss of (model, x, y) lacks;
    step 1 stands in for it."""
    def attack(mask, radius: float):
        return _attack(model, lambda xa: soft_logit_margin(model(xa), y[mask]), x[mask],
                       replace(cfg, eps=radius), generator)

    with eval_mode(model):
        everyone = torch.ones_like(y, dtype=torch.bool)
        margin, u = _first_fooling(model, x, y, attack(everyone, cfg.d_max),
                                   x.new_full((len(x),), cfg.d_max), AN_PGD_LEVELS.bit_length() - 1)
        x_star, trial = _on_segment(x, u, margin), margin.clone()
        for radius in trial.unique().tolist():
            on = trial == radius
            m2, u2 = _first_fooling(model, x[on], y[on], attack(on, radius), trial[on], cfg.mma_search_steps)
            shorter = m2 < margin[on]
            margin[on] = torch.where(shorter, m2, margin[on])
            x2 = _on_segment(x[on], u2, m2)
            x_star[on] = torch.where(per_sample(shorter, x2), x2, x_star[on])
    return x_star.detach(), margin


def mma_loss(model, x, y, cfg: LossConfig, generator=None):
    """MMA (Ding et al. 2020) with its clean term: L = CE(f(x), y) + beta * L_MMA, where

        L_MMA = 1/B [ sum_{i: F(x_i) = y_i, d_i < d_max} CE(f(x_i + delta*_i), y_i)
                      + sum_{j: F(x_j) != y_j} CE(f(x_j), y_j) ],

    delta*_i and d_i from :func:`an_pgd`. Correctly classified points whose margin reaches ``d_max``
    get no MMA term (the hinge of the paper's L_MMA); misclassified points get clean CE. Minimising
    CE at the shortest successful perturbation pushes the decision boundary away from x, i.e.
    raises the input-space margin (the paper's link between the adversarial loss and the margin).

    ``beta`` is the MMA weight: the paper's trained models, MMA-d_max, weigh clean CE 1/3 and L_MMA
    2/3, which is beta = 2 up to a factor 3 on the whole loss; beta = 0 is clean CE. F(x) comes from
    an eval-mode forward (as ERA's prediction); the margin is the distance to the argmax decision
    boundary (the authors' code searches the soft logit margin's zero, slightly inside it). Stats:
    ``margin`` is the batch mean of min(d_i, d_max) with 0 for misclassified points (the quantity
    the authors select checkpoints by)."""
    with torch.no_grad(), eval_mode(model):
        correct = model(x).argmax(1) == y
    margin = x.new_zeros(len(x))
    logits_nat = model(x)
    ce_nat = F.cross_entropy(logits_nat, y, reduction="none")
    pushed = logits_nat.new_zeros(())
    if correct.any():
        x_star, margin[correct] = an_pgd(model, x[correct], y[correct], cfg, generator)
        below = margin[correct] < cfg.d_max
        if below.any():
            pushed = F.cross_entropy(model(x_star[below]), y[correct][below], reduction="sum")
    mma = (pushed + ce_nat[~correct].sum()) / len(x)
    ce = ce_nat.mean()
    return ce + cfg.beta * mma, {"ce": ce.item(), "mma": mma.item(), "margin": margin.mean().item()}
