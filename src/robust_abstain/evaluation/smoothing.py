"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): PREDICT and CERTIFY for the smoothed
classifier G(x) = argmax_c P(f(x + eta) = c), eta ~ N(0, sigma^2 I), batched over many inputs.

Guarantees:
- PREDICT returns a class other than G(x) with probability at most ``alpha`` (it abstains otherwise).
- CERTIFY returns (c, r) with r > 0 and c != G(x), or G not constant on the L2 ball B_r(x), with
  probability at most ``alpha``; it abstains (-1, radius 0) when the lower confidence bound of
  p_A is below 1/2.
- Throughput: the noisy samples of all inputs of a call form one stream of (input, draw) pairs cut
  into full batches of ``batch_size``, so the base model sees full batches (only the last batch of a
  call may be shorter); counts are one ``torch.bincount`` per batch.
- Reproducibility: each input's noise comes in fixed-size blocks (``NOISE_BLOCK`` draws) from the
  generator given for it, so counts do not depend on ``batch_size``; with per-point generators
  (:func:`point_generators`, seeded by (seed, dataset index)) they do not depend on how points are
  grouped into calls either. This holds bit-for-bit when the base model's forward is batch-invariant
  (each output row independent of the rest of the batch), as are the linear and conv layers on CPU
  in practice.

Example::

    >>> smooth = Smooth(model, num_classes=10, sigma=0.25)
    >>> gens = point_generators(seed=0, indices=range(len(x)))
    >>> cls, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, generator=gens)
    >>> pred = smooth.predict(x, n=1000, alpha=0.001)       # -1 (ABSTAIN) where G is unsure

The resumable runner over a test set (partial files, shards) is :mod:`.certify`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm
from torch import nn

from ..analysis.records import ABSTAIN
from ..attacks import eval_mode
from ..errors import ParamError
from ..params import count, number, positive
from ..seeds import stream_seed

NOISE_BLOCK = 250  # draws per randn call per input: part of the definition of the noise stream
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_budget(n0: int | None, n: int, alpha: float, batch_size: int, prefix: str = "") -> None:
    """Validate CERTIFY's / PREDICT's arguments (``n0`` None: PREDICT); messages name
    ``prefix + key``."""
    if n0 is not None:
        count(n0, f"{prefix}n0")
    count(n, f"{prefix}n")
    number(alpha, f"{prefix}alpha", min=0, max=1, strict_min=True)
    if alpha >= 1:
        raise ParamError(f"{prefix}alpha must be < 1, got {alpha!r}")
    count(batch_size, f"{prefix}batch_size")


def point_generators(seed: int, indices: Sequence[int] | torch.Tensor,
                     device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per point, seeded by the stream (seed, dataset index): a point's noise depends
    on nothing but the seed and its own index (not on which other points share the call)."""
    seed = count(seed, "seed", min=0)
    return [torch.Generator(device=device).manual_seed(stream_seed(seed, i))
            for i in torch.as_tensor(indices).tolist()]


def lower_confidence_bound(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials
    (the lower end of the two-sided ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``)."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = beta_dist.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, lo, 0.0)


class Smooth:
    """The smoothed classifier G of a base classifier f: [B, ...] -> [B, num_classes] logits.
    The base classifier runs in eval mode while it is sampled; its modes are restored afterwards."""

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float):
        self.base_classifier = base_classifier
        self.num_classes = count(num_classes, "num_classes", min=2)
        self.sigma = positive(sigma, "sigma")

    # -- Cohen et al.'s two procedures, for a batch of inputs ---------------------------------------
    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 1000,
                generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY each input of x [B, ...]: (class LongTensor [B], L2 radius float64 tensor [B]).
        With probability >= 1 - alpha per input, a non-abstaining answer c has G(x') = c for all
        ||x' - x||_2 < radius."""
        check_budget(n0, n, alpha, batch_size)
        # draw n0 samples of f(x + eta) for selection, then n more for estimation
        counts0, counts = self.noise_counts(x, n0, n, batch_size, generator)
        # guess the top class from the first, bound its probability with the second
        return self.certify_from_counts(counts0, counts, alpha)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000,
                generator: Generators = None) -> torch.Tensor:
        """PREDICT for each input of x [B, ...] from n noisy samples: LongTensor [B], -1 = abstain.
        Each answer is G(x) or ABSTAIN with probability >= 1 - alpha."""
        check_budget(None, n, alpha, batch_size)
        # draw n samples of f(x + eta)
        _, counts = self.noise_counts(x, 0, n, batch_size, generator)
        # answer the top class only if a test separates it from the runner-up
        return self.predict_from_counts(counts, alpha)

    def certify_points(self, x: torch.Tensor, indices: Sequence[int] | torch.Tensor, seed: int,
                       n0: int, n: int, alpha: float, batch_size: int = 1000
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CERTIFY with per-point noise seeded by (seed, dataset index), plus PREDICT on the same
        estimation counts: (cert_pred, cert_radius, smooth_pred). Each answer depends only on
        (seed, index, x[i]), never on which other points share the call or on batch_size."""
        check_budget(n0, n, alpha, batch_size)
        if len(indices) != len(x):
            raise ParamError(f"got {len(indices)} indices for {len(x)} inputs")
        counts0, counts = self.noise_counts(x, n0, n, batch_size, point_generators(seed, indices, x.device))
        cls, radius = self.certify_from_counts(counts0, counts, alpha)
        return cls, radius, self.predict_from_counts(counts, alpha)

    # -- decisions from counts -----------------------------------------------------------------
    def certify_from_counts(self, counts0: torch.Tensor, counts: torch.Tensor,
                            alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY from selection counts [B, C] and independent estimation counts [B, C]:
        c_A = argmax of the selection counts (first on ties); p_A_lower = one-sided (1 - alpha)
        Clopper-Pearson bound on the estimation count of c_A; radius = sigma * PhiInv(p_A_lower).
        Abstains (-1, 0.0) where p_A_lower < 1/2. Sound with probability >= 1 - alpha."""
        # the top class c_A of the selection counts
        ca = counts0.cpu().argmax(1)
        # a lower confidence bound on p_A from its estimation count
        n = int(counts[0].sum()) if len(counts) else 0
        k = counts.cpu().gather(1, ca[:, None]).squeeze(1).numpy()
        p_lower = lower_confidence_bound(k, n, alpha)
        # abstain below 1/2; else certify the radius sigma * PhiInv(p_A_lower)
        ok = p_lower >= 0.5
        radius = np.where(ok, self.sigma * norm.ppf(np.where(ok, p_lower, 0.5)), 0.0)
        cls = torch.where(torch.from_numpy(ok), ca, torch.full_like(ca, ABSTAIN))
        return cls.to(counts.device), torch.from_numpy(radius).to(counts.device)

    @staticmethod
    def predict_from_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
        """PREDICT from counts [B, C]: the top class if a two-sided binomial test of the top-2 counts
        rejects p = 1/2 at level alpha, else ABSTAIN (a tie always abstains, its p-value being 1).
        The answer differs from G(x) with probability at most alpha."""
        top = torch.topk(counts.cpu(), 2, dim=1)
        out = torch.full((len(counts),), ABSTAIN, dtype=torch.long)
        for i, ((na, nb), ca) in enumerate(zip(top.values.tolist(), counts.cpu().argmax(1).tolist())):
            if na > nb and binomtest(na, na + nb, 0.5).pvalue <= alpha:
                out[i] = ca
        return out.to(counts.device)

    # -- sampling ----------------------------------------------------------------------------
    def noise_counts(self, x: torch.Tensor, n0: int, n: int, batch_size: int = 1000,
                     generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class counts of f on n0 (selection) then n (estimation) noisy copies of each input.

        Returns two LongTensors [B, num_classes]. ``generator``: one shared by all inputs (used in
        input order), one per input, or None (the global RNG). Every batch the model sees holds
        ``batch_size`` samples, drawn across inputs, except possibly the last."""
        count(n0, "n0", min=0)
        count(n, "n", min=0)
        count(batch_size, "batch_size")
        b, c = len(x), self.num_classes
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * b
        if len(gens) != b:
            raise ParamError(f"got {len(gens)} generators for {b} inputs")
        counts = torch.zeros(2 * b * c, dtype=torch.long, device=x.device)
        total = b * (n0 + n)
        if total == 0:
            return counts.view(b, 2, c)[:, 0], counts.view(b, 2, c)[:, 1]
        buf = torch.empty((min(batch_size, total), *x.shape[1:]), dtype=x.dtype, device=x.device)
        slots = torch.empty(len(buf), dtype=torch.long, device=x.device)

        def flush(m: int) -> None:
            logits = self.base_classifier(buf[:m])
            if logits.shape != (m, c):
                raise ParamError(f"base classifier returned shape {tuple(logits.shape)}, "
                                 f"expected ({m}, {c}) for num_classes={c}")
            counts.add_(torch.bincount(slots[:m] * c + logits.argmax(1), minlength=2 * b * c))

        with eval_mode(self.base_classifier), torch.inference_mode():
            fill = 0
            for slot, block in self._blocks(x, gens, n0, n):
                while len(block):
                    take = min(len(buf) - fill, len(block))
                    buf[fill:fill + take].copy_(block[:take])
                    slots[fill:fill + take] = slot
                    fill, block = fill + take, block[take:]
                    if fill == len(buf):
                        flush(fill)
                        fill = 0
            if fill:
                flush(fill)
        counts = counts.view(b, 2, c)
        return counts[:, 0].clone(), counts[:, 1].clone()

    def _blocks(self, x: torch.Tensor, gens: list, n0: int, n: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(slot, noisy block) in stream order; slot = 2 * input + phase (0: selection, 1: estimation)."""
        for i in range(len(x)):
            for phase, total in ((0, n0), (1, n)):
                for start in range(0, total, NOISE_BLOCK):
                    k = min(NOISE_BLOCK, total - start)
                    eta = torch.randn((k, *x.shape[1:]), generator=gens[i], device=x.device, dtype=x.dtype)
                    yield 2 * i + phase, eta.mul_(self.sigma).add_(x[i])
