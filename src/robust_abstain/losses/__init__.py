"""Training objectives, each named after its equation in the paper.

Every loss has the signature ``loss(model, x, y, cfg, generator) -> (scalar, stats)``, where
``cfg`` is a validated :class:`LossConfig` and ``stats`` holds detached per-term means for logging.
Attacks inside a loss run with the model in eval mode (BatchNorm statistics frozen) and the loss
forward passes in the model's own mode, as in TRADES.

Choices where the authors' code departs from the paper all documented here:

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
* MMA (baseline, Ding et al. 2020): L = CE(f(x), y) + beta * L_MMA, so beta = 2 is the paper's
  MMA-d_max (1/3 clean CE, 2/3 L_MMA) up to a factor 3. Its AN-PGD runs PGD at radius d_max, then
  again at that first margin estimate (the authors run one PGD, at each example's previous-epoch
  margin: a memory a loss of one batch lacks), and bisects for the argmax decision boundary (the
  authors: the soft logit margin's zero) with ``mma_search_steps`` steps (see :func:`an_pgd`).
"""

from .adversarial import (an_pgd, ce_loss, dga_loss, era_attack, era_loss, era_term, mart_loss, mma_loss,
                          soft_logit_margin, trades_attack, trades_loss, trades_terms)
from .common import Stats, eval_mode, kl_div, most_likely_other, soft_inaccuracy
from .config import LossConfig
from .registry import LOSSES, LossFn, LossSpec, get_loss
from .smoothing import cra_loss, macer_radius, noise_loss, noisy_copies

__all__ = ["LOSSES", "LossConfig", "LossFn", "LossSpec", "Stats", "an_pgd", "ce_loss", "cra_loss", "dga_loss",
           "era_attack", "era_loss", "era_term", "eval_mode", "get_loss", "kl_div", "macer_radius",
           "mart_loss", "mma_loss", "most_likely_other", "noise_loss", "noisy_copies", "soft_inaccuracy",
           "soft_logit_margin", "trades_attack", "trades_loss", "trades_terms"]
