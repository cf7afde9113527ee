"""Training-free mixing of an accurate core model and a robust model: baselines for the paper's
composition H = S F_robust + (1 - S) F_core (12). Both mixtures output the **log** of mixed class
probabilities, so ``argmax`` is the mixed prediction and CE on the output (APGD-CE) attacks the
mixture end to end.

Linear mixing, with alpha in [0, 1]::

    LinearMix(x) = log((1 - alpha) softmax(f_core(x)) + alpha softmax(f_robust(x)))

MixedNUTS (Bai et al. 2024, "MixedNUTS: Training-Free Accuracy-Robustness Balance via Nonlinearly
Mixed Classifiers"; code github.com/Bai-YT/MixedNUTS, ``models/output_maps.py``,
``models/nonlin_mixed_classifier.py``), with the robust logits z = f_robust(x) over C classes::

    LN(z)      = (z - mean(z)) / sqrt(var(z) + 1e-8)          (var unbiased, over the C classes)
    u          = GELU(LN(z) + c)                              (c: the bias of the "clamp")
    M(z)       = s * sign(u) * |u|^p                          (s > 0: scale, p > 0: exponent)
    NutsMix(x) = log((1 - alpha) P_core(x) + alpha softmax(M(f_robust(x))))

``P_core`` is ``core_probs="onehot"`` (the core's hard prediction, their ``HardMaxMap``: what their
published "best" configuration runs) or ``"softmax"`` (their ``IdentityMap``). Their layer norm
standardises the top-250 logits; with at most 250 classes, as here, that is all of them.

**Gradients** (``attack_view``). With a one-hot core the mixture has no gradient through the core,
and the transform flattens the robust softmax, so MixedNUTS's own adaptive AutoAttack
(``adaptive_autoattack/autopgd_base.py``) computes the loss value, the success test and the
kept point on the true output but the **gradient** on a differentiable surrogate
(``forward(..., return_all=True)``):

* ``"exact"``: the gradient of the true output (no surrogate);
* ``"nonlin"`` (their ``use_nonlin_for_grad``):
  ``log((1 - alpha) softmax(f_core) + alpha softmax(M(f_robust)))``;
* ``"raw"`` (their ``--disable_nonlin_for_grad``, the setting of their published numbers, "usually
  stronger"): ``log((1 - a) softmax(f_core) + a (0.9 softmax(f_robust) + 0.1 softmax(M(f_robust))))``
  with ``a = grad_alpha`` (theirs: the alpha of *linear* mixing at a target robust accuracy).

Here the surrogate enters as ``true.detach() + (surr - surr.detach())``: the value is exactly the
true mixture (so :class:`~robust_abstain.attacks.APGD`'s objective, step-size rule and success test
see the mixture itself) and the gradient is the surrogate's. Our APGD needs no change for it.

Both modules run their two models in eval mode (:func:`robust_abstain.attacks.eval_mode`).

Examples::

    >>> mix = LinearMix(core, robust, alpha=0.5)
    >>> pred = mix(x).argmax(1)                                   # the mixed prediction
    >>> nuts = NutsMix(core, robust, alpha=0.98, s=2.0, p=2.0, c=-0.5, attack_view="raw", grad_alpha=0.9)
    >>> x_adv = APGD(nuts, eps=0.05, objective="ce").perturb(x, nuts(x).argmax(1))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.common import eval_mode
from ..params import choice, number, positive, probability

CORE_PROBS = ("onehot", "softmax")
ATTACK_VIEWS = ("exact", "nonlin", "raw")
RAW_RATIO = 0.9    # MixedNUTS's share of the untransformed robust softmax in the "raw" surrogate
LN_EPS = 1e-8      # MixedNUTS's variance floor of the layer norm


def log_mix(logp_core: torch.Tensor, logp_robust: torch.Tensor, alpha: float) -> torch.Tensor:
    """``log((1 - alpha) exp(logp_core) + alpha exp(logp_robust))``, computed as a log-sum-exp (no
    underflow for confident models); alpha 0 / 1 give ``logp_core`` / ``logp_robust`` exactly."""
    if alpha == 0:
        return logp_core
    if alpha == 1:
        return logp_robust
    return torch.logaddexp(logp_core + math.log1p(-alpha), logp_robust + math.log(alpha))


def layer_norm(z: torch.Tensor) -> torch.Tensor:
    """MixedNUTS's normalisation of logits, per row: ``(z - mean) / sqrt(var + 1e-8)``."""
    return (z - z.mean(1, keepdim=True)) / (z.var(1, keepdim=True) + LN_EPS).sqrt()


def nuts_transform(z: torch.Tensor, s: float, p: float, c: float) -> torch.Tensor:
    """MixedNUTS's robust-logit map ``M(z) = s sign(u) |u|^p`` with ``u = GELU(LN(z) + c)``
    (their ``LNClampPowerScaleMap`` with GELU). ``|u|`` is floored at 1e-30 only inside the power,
    so ``M`` is exact and its gradient finite where ``u = 0``."""
    u = F.gelu(layer_norm(z) + c)
    return s * u.sign() * u.abs().clamp_min(1e-30) ** p


def _check_alpha(alpha: float, key: str = "alpha") -> float:
    return probability(alpha, key)


class LinearMix(nn.Module):
    """``log((1 - alpha) softmax(f_core) + alpha softmax(f_robust))`` (see the module docstring);
    alpha 0 is the core and alpha 1 the robust model (the other model is then not evaluated)."""

    def __init__(self, core: nn.Module, robust: nn.Module, alpha: float):
        super().__init__()
        self.core, self.robust = core, robust
        self.alpha = _check_alpha(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.core), eval_mode(self.robust):
            if self.alpha == 1:
                return F.log_softmax(self.robust(x), 1)
            if self.alpha == 0:
                return F.log_softmax(self.core(x), 1)
            return log_mix(F.log_softmax(self.core(x), 1), F.log_softmax(self.robust(x), 1), self.alpha)


class NutsMix(nn.Module):
    """MixedNUTS: ``log((1 - alpha) P_core + alpha softmax(M(f_robust)))`` with ``M`` of
    :func:`nuts_transform`; gradients per ``attack_view`` (module docstring). alpha 0 is the core
    (as ``core_probs`` says), alpha 1 the transformed robust model (GELU is not monotone, so its
    prediction may differ from F_robust's where the top normalised logit + c is below 0).

    Args:
        alpha: the mixing weight in [0, 1]. s, p: > 0. c: any real.
        core_probs: ``"onehot"`` (MixedNUTS's published setting) or ``"softmax"``.
        attack_view: ``"exact"``, ``"nonlin"`` or ``"raw"``: which gradient an attack sees.
        grad_alpha: the mixing weight of the ``"raw"`` surrogate; default ``alpha``."""

    def __init__(self, core: nn.Module, robust: nn.Module, alpha: float, s: float, p: float, c: float,
                 core_probs: str = "onehot", attack_view: str = "raw", grad_alpha: float | None = None):
        super().__init__()
        self.core, self.robust = core, robust
        self.alpha = _check_alpha(alpha)
        self.s, self.p, self.c = positive(s, "s"), positive(p, "p"), number(c, "c")
        self.core_probs = choice(core_probs, "core_probs", CORE_PROBS)
        self.attack_view = choice(attack_view, "attack_view", ATTACK_VIEWS)
        self.grad_alpha = self.alpha if grad_alpha is None else _check_alpha(grad_alpha, "grad_alpha")

    def _core_logp(self, core_logits: torch.Tensor) -> torch.Tensor:
        if self.core_probs == "softmax":
            return F.log_softmax(core_logits, 1)
        hard = F.one_hot(core_logits.argmax(1), core_logits.shape[1]).to(core_logits.dtype)
        return hard.log()    # 0 at the core's prediction, -inf elsewhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.core), eval_mode(self.robust):
            core_logits = self.core(x) if self.alpha < 1 or self.attack_view != "exact" else None
            robust_logits = self.robust(x) if self.alpha > 0 or self.attack_view != "exact" else None
        mapped = None if robust_logits is None else F.log_softmax(
            nuts_transform(robust_logits, self.s, self.p, self.c), 1)
        core = None if core_logits is None else self._core_logp(core_logits)
        true = log_mix(core, mapped, self.alpha)    # alpha 0 / 1: the one term computed
        if self.attack_view == "exact":
            return true
        surr = self._surrogate(core_logits, robust_logits, mapped)
        return true.detach() + (surr - surr.detach())

    def _surrogate(self, core_logits: torch.Tensor, robust_logits: torch.Tensor,
                   mapped: torch.Tensor) -> torch.Tensor:
        """The differentiable output whose gradient the attack sees (``"nonlin"`` or ``"raw"``)."""
        core = F.log_softmax(core_logits, 1)
        if self.attack_view == "nonlin":
            return log_mix(core, mapped, self.alpha)
        robust = log_mix(F.log_softmax(robust_logits, 1), mapped, 1 - RAW_RATIO)
        return log_mix(core, robust, self.grad_alpha)
