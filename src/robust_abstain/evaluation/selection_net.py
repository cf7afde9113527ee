"""A learned selection network S_NET, the baseline of ACE (Mueller et al. 2021, "Certify or Predict:
Boosting Certified Robustness with Compositional Architectures"), as the selector S of (12)
H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x).

A small binary network s: [0, 1]^d -> one logit learns where F_robust is robust **and** accurate:

1. labels (:func:`selection_labels`): t(x) = 1 iff F_robust(x) = y and F_robust is robust on
   B_2eps(x) under APGD-CE (records.accurate & records.robust(df, 2), the robust-selection rule of
   Appendix A.3), on ``n_train`` points of the **training** split (validation is for choices only);
2. training (:func:`train_selector`): BCE on t, adversarially (PGD in B_eps on the network's own
   BCE, so that its decision holds on B_eps), seeded: same params -> same weights;
3. scoring (:func:`net_records`): ``net_score`` = sigmoid(s(x)) and ``net_score_min``, the lowest
   score attacks that minimise s's logit found in B_eps(x) and [0, 1] (PGD from x, then APGD with
   ``eval_restarts`` random starts: the worst case over both), added to
   F_robust's empirical records. analysis.selectors.selection_net reads them: selected iff
   net_score >= tau, robustly selected iff also net_score_min >= tau and F_robust robust on B_2eps.

Example::

    >>> cfg = SelectionNetConfig(n_train=2000, label_steps=10, arch="cnn", width=8, steps=200,
    ...                          lr=1e-3, batch_size=128, seed=0, adv_steps=3, eval_steps=10,
    ...                          eval_restarts=1)
    >>> t = selection_labels(robust_model, x_train, y_train, eps, cfg)
    >>> net, spec = train_selector(x_train, t, cfg, eps, mean=mean, std=std)
    >>> val = net_records(val_records, net, x_val, eps, cfg)     # val_records + net_score(_min)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..analysis.records import accurate, robust
from ..analysis.selectors import NET_COLUMNS
from ..attacks import APGD, NORMS, eval_mode, pgd
from ..attacks.autoattack import AttackBudget
from ..errors import DataError
from ..models.checkpoint import ModelSpec
from ..models.nets import ARCHS
from ..parallel import pmap
from ..params import Section, choice, count, positive
from ..seeds import stream_seed
from .empirical import PointSet, records_in_pieces


@dataclass(frozen=True)
class SelectionNetConfig(Section):
    """The ``selection_net`` params section.

    ``n_train``: training-split points labelled and trained on; ``label_steps``: APGD-CE steps of
    the labels' attack on F_robust (at eps and 2 eps); ``arch``, ``width``: the network
    (models.nets.ARCHS, one output logit); ``steps``, ``lr``, ``batch_size``, ``seed``: Adam
    training; ``adv_steps``: PGD steps of the adversarial training in B_eps (0: plain BCE);
    ``eval_steps``: steps of the attacks that minimise the score (``net_score_min``), PGD from x and
    APGD from ``eval_restarts`` random starts (0: PGD only); ``device``. The composition's
    threshold tau is chosen on validation from the report's grid (``report.n_taus``), like every
    other threshold."""

    n_train: int
    label_steps: int
    arch: str
    width: int | None            # None: the architecture's own (resnet18)
    steps: int
    lr: float
    batch_size: int
    seed: int
    adv_steps: int
    eval_steps: int
    eval_restarts: int
    device: str = "auto"

    def validate(self, prefix: str = "selection_net") -> None:
        for key in ("n_train", "label_steps", "steps", "batch_size", "eval_steps"):
            count(getattr(self, key), f"{prefix}.{key}")
        if self.width is not None:
            count(self.width, f"{prefix}.width")
        count(self.adv_steps, f"{prefix}.adv_steps", min=0)
        count(self.eval_restarts, f"{prefix}.eval_restarts", min=0)
        count(self.seed, f"{prefix}.seed", min=0)
        positive(self.lr, f"{prefix}.lr")
        choice(self.arch, f"{prefix}.arch", list(ARCHS))


# ---------------------------------------------------------------------------------- labels
def train_subset(n_points: int, n: int, seed: int) -> torch.Tensor:
    """The sorted indices of ``n`` training points (all if ``n >= n_points``), seeded."""
    if n >= n_points:
        return torch.arange(n_points)
    g = torch.Generator().manual_seed(stream_seed(seed, 0))
    return torch.randperm(n_points, generator=g)[:n].sort().values


def selection_labels(robust_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                     cfg: SelectionNetConfig, norm: str = "linf", batch_size: int = 500,
                     progress: bool = True) -> torch.Tensor:
    """t(x) = 1 iff F_robust(x) = y and F_robust is robust on B_2eps(x) under APGD-CE
    (``cfg.label_steps`` steps, seed ``cfg.seed``): float tensor of 0 / 1, one per point."""
    budget = AttackBudget(norm=norm, steps=cfg.label_steps, restarts=1, seed=cfg.seed, batch_size=batch_size)
    (df, *_), = records_in_pieces(robust_model, {"train": PointSet(x, y, torch.arange(len(y)))}, eps,
                                 ("apgd-ce",), budget, sr_scales=(),
                                 desc="selection labels" if progress else None).values()
    return torch.as_tensor(accurate(df) & robust(df, 2), dtype=torch.float32)


# ---------------------------------------------------------------------------------- training
def net_spec(cfg: SelectionNetConfig, input_shape: tuple[int, ...], mean, std) -> ModelSpec:
    """The network's architecture: ``cfg.arch`` at ``cfg.width`` with one output logit."""
    return ModelSpec(cfg.arch, tuple(input_shape), 1, tuple(float(m) for m in mean),
                     tuple(float(s) for s in std), cfg.width)


def logit(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """s(x): the network's logit per point, shape [B] (S_NET(x) = 1 iff sigmoid(s(x)) >= tau)."""
    return net(x).reshape(-1)


def train_selector(x: torch.Tensor, t: torch.Tensor, cfg: SelectionNetConfig, eps: float,
                   mean, std, norm: str = "linf", device: torch.device | str = "cpu",
                   progress: bool = True) -> tuple[nn.Module, ModelSpec]:
    """Train s on (x, t) for ``cfg.steps`` Adam steps of BCE at the worst point PGD
    (``cfg.adv_steps`` steps, random start) finds in B_eps(x) for the network's own BCE (Madry et
    al.'s adversarial training, so that s's decision holds on B_eps). Weights, batches (a seeded
    permutation per pass over the data) and PGD starts all come from ``cfg.seed``; torch's global
    RNG is left as it was. Returns (the network in eval mode, on ``device``; its spec)."""
    norm = choice(norm, "norm", NORMS)
    if len(x) != len(t) or len(x) == 0:
        raise DataError(f"selection network: {len(x)} inputs but {len(t)} labels")
    spec = net_spec(cfg, tuple(x.shape[1:]), mean, std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, 1))
        net = spec.build()
    net.to(device)
    x, t = x.to(device), t.to(device, torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(stream_seed(cfg.seed, 2))
    starts = torch.Generator().manual_seed(stream_seed(cfg.seed, 3))
    perm, at = torch.randperm(len(x), generator=order), 0
    bar = tqdm(range(cfg.steps), desc="selection net", disable=not progress, mininterval=5)
    for _ in bar:
        if at + cfg.batch_size > len(x) and at > 0:          # a new pass over the data
            perm, at = torch.randperm(len(x), generator=order), 0
        b = perm[at:at + cfg.batch_size].to(device)
        at += cfg.batch_size
        xb, tb = x[b], t[b]
        with eval_mode(net):
            xa = pgd(lambda z: F.binary_cross_entropy_with_logits(logit(net, z), tb, reduction="none"),
                     xb, eps, cfg.adv_steps, norm=norm, generator=starts)
        net.train()
        loss = F.binary_cross_entropy_with_logits(logit(net, xa), tb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return net.eval(), spec


# ---------------------------------------------------------------------------------- scoring
class _ScoreAsClasses(nn.Module):
    """s as two logits [FLOOR, s(x)] for APGD's (17) objective with label 1: the objective, the log
    of softmax_0 = sigmoid(FLOOR - s(x)), falls as s(x) rises, so maximising it minimises s(x); FLOOR
    lies below any logit the network gives, so class 1 stays the argmax and APGD keeps minimising
    (it would stop at a point it counts as misclassified)."""

    FLOOR = -1e4

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = logit(self.net, x)[:, None]
        return torch.cat([torch.full_like(z, self.FLOOR), z], 1)


def lowest_score(net: nn.Module, x: torch.Tensor, eps: float, steps: int, restarts: int, seed: int,
                 norm: str = "linf", batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attack S_NET: minimise the logit s(x') in B_eps(x) and [0, 1] by PGD from x (no random start),
    then by APGD with the (17) objective on :class:`_ScoreAsClasses` from ``restarts`` random starts
    (seeded by ``seed``; 0: PGD only), keeping per point the lowest logit among x, every PGD iterate
    and APGD's point.

    Returns (score at x, lowest score found, the point where it was found), the scores being
    sigmoid(s). Guarantees: the points lie in B_eps(x) and [0, 1] (attacks.pgd, APGD); the lowest
    score is never above the score at x (x is the first candidate); the network runs in eval mode
    and its modes are restored; same inputs and seed, same result; the global RNG is left alone."""
    norm = choice(norm, "norm", NORMS)
    count(restarts, "restarts", min=0)

    def piece(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:   # the batch from i, seeded (seed, i)
        xb = x[i:i + batch_size]
        with torch.no_grad():
            z0 = logit(net, xb)
        best_z, best_x = z0.clone(), xb.detach().clone()

        def track(z_at: torch.Tensor, x_at: torch.Tensor) -> None:
            lower = z_at < best_z
            best_z[lower], best_x[lower] = z_at[lower], x_at[lower]

        def objective(xa: torch.Tensor) -> torch.Tensor:
            z = logit(net, xa)
            track(z.detach(), xa.detach())
            return z

        last = pgd(objective, xb, eps, steps, norm=norm, random_start=False, maximize=False)
        with torch.no_grad():
            track(logit(net, last), last)
        if restarts and eps > 0:
            apgd = APGD(_ScoreAsClasses(net), norm=norm, eps=eps, steps=steps, restarts=restarts,
                        objective="conf", seed=stream_seed(seed, i), batch_size=batch_size)
            adv = apgd.perturb(xb, torch.ones(len(xb), dtype=torch.long, device=xb.device))
            with torch.no_grad():
                track(logit(net, adv), adv)
        return torch.sigmoid(z0), torch.minimum(torch.sigmoid(best_z), torch.sigmoid(z0)), best_x

    with eval_mode(net):
        done = pmap(piece, range(0, len(x), batch_size), desc="attack on S_NET", device=x.device)
    return tuple(torch.cat([d[j] for d in done]) for j in range(3))  # type: ignore[return-value]


def net_records(records: pd.DataFrame, net: nn.Module, x: torch.Tensor, eps: float,
                cfg: SelectionNetConfig, norm: str = "linf", batch_size: int = 500) -> pd.DataFrame:
    """A copy of F_robust's empirical ``records`` (same rows, same order) with the columns
    ``net_score`` (sigmoid(s(x))) and ``net_score_min`` (:func:`lowest_score` with
    ``cfg.eval_steps`` steps, ``cfg.eval_restarts`` APGD restarts, seed ``cfg.seed``, in B_eps(x)).
    ``x`` holds the records' points in their row order."""
    if len(x) != len(records):
        raise DataError(f"selection network: {len(x)} inputs for {len(records)} records")
    dev = next(net.parameters()).device
    score, low, _ = lowest_score(net, x.to(dev), eps, cfg.eval_steps, cfg.eval_restarts, cfg.seed, norm,
                                 batch_size)
    out = records.copy()
    out[NET_COLUMNS[0]], out[NET_COLUMNS[1]] = score.cpu().double().numpy(), low.cpu().double().numpy()
    return out


def split_points(records: pd.DataFrame, x: torch.Tensor, y: torch.Tensor, name: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of a split that ``records`` cover (by their ``index`` column), in row order;
    checks the records' labels."""
    idx = records["index"].to_numpy()
    if len(idx) and (idx.min() < 0 or idx.max() >= len(y)):
        raise DataError(f"{name} hold point indices outside the split (0 ... {len(y) - 1})")
    at = torch.tensor(idx, dtype=torch.long)
    if not np.array_equal(y[at].numpy(), records["label"].to_numpy()):
        raise DataError(f"{name} disagree with the data's labels: made from other data?")
    return x[at], y[at]


__all__ = ["SelectionNetConfig", "lowest_score", "net_records", "net_spec", "selection_labels",
           "split_points", "train_selector", "train_subset"]
