"""The loss section of params: one typed config for every training objective."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParamError
from ..params import Section, choice, count, non_negative, positive


@dataclass(frozen=True)
class LossConfig(Section):
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
    d_max: float | None = None   # MMA's margin cap (its hinge); required for mma, >= eps
    mma_search_steps: int = 10   # MMA's AN-PGD bisection steps (margin precision d_max / 2^n)

    def validate(self, prefix: str = "loss") -> None:
        from .registry import LOSSES
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
        if self.d_max is not None:
            positive(self.d_max, f"{prefix}.d_max")
        count(self.mma_search_steps, f"{prefix}.mma_search_steps")
        if LOSSES[self.name].kind == "adversarial" and self.eps <= 0:
            raise ParamError(f"{prefix}.eps must be > 0 for the adversarial loss {self.name!r}")
        if self.name == "mma":  # margins are pushed up to d_max: below eps MMA cannot aim at eps
            if self.d_max is None or self.d_max < self.eps:
                raise ParamError(f"{prefix}.d_max must be set and >= {prefix}.eps ({self.eps}) for the "
                                 f"loss 'mma', got {self.d_max!r}")
            count(self.pgd_steps, f"{prefix}.pgd_steps")  # the search direction comes from PGD
            if self.step_size is not None:                 # AN-PGD attacks at several radii
                raise ParamError(f"{prefix}.step_size must be unset for the loss 'mma': AN-PGD scales its "
                                 f"step with each radius it searches (2.5 * radius / pgd_steps)")
