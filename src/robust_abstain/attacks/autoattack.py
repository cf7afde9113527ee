"""The other members of the AutoAttack ensemble (Croce & Hein, ICML 2020), run through
``pyautoattack`` (the reference implementation on PyPI), against a model's own prediction:

* ``apgd-t``: APGD on the targeted DLR loss, once per target class (the ``n_target_classes`` most
  likely classes other than the attacked one);
* ``fab-t``: targeted FAB, the minimal-distortion boundary attack (a point it finds farther than
  eps from x does not count);
* ``square``: Square Attack, score-based and gradient-free (margin loss, ``n_queries`` queries):
  it finds what gradient masking hides from the white-box attacks.

What :func:`attack_points` guarantees whatever the library returns: the point lies in the eps-ball
around ``x`` (Linf or L2) and in [0, 1] (it is projected; a projected point is re-evaluated, so a
verdict is always the model's prediction at a point of the threat model); the model runs in eval
mode and gets its modes back; the global RNG state is the same afterwards as before (the library
seeds it with ``seed``, so the same inputs and seed give the same points).

Example::

    >>> budget = AttackBudget(norm="linf", member_steps=100, n_target_classes=9, square_queries=5000)
    >>> pred = model(x).argmax(1)
    >>> adv_pred, conf = attack_predictions("square", model, x, pred, 8 / 255, budget)
    >>> robust = adv_pred == pred
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParamError
from .common import eval_mode, model_device
from .pgd import project

#: our threat-model names -> pyautoattack's
_NORM = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AttackBudget:
    """The budgets of an attack list: ``steps`` (our APGD's iterations), ``restarts``,
    ``member_steps`` (APGD-T and FAB-T iterations; AutoAttack's standard version: 100),
    ``n_target_classes`` (APGD-T and FAB-T: target classes tried, standard 9), ``square_queries``
    (Square's query budget, standard 5000)."""

    norm: str = "linf"
    steps: int = 40
    restarts: int = 1
    member_steps: int | None = None
    n_target_classes: int | None = None
    square_queries: int | None = None
    seed: int = 0
    batch_size: int = 500

    def need(self, key: str, attack: str) -> int:
        v = getattr(self, key)
        if v is None:
            raise ParamError(f"the attack {attack!r} needs the budget {key!r} (a key of the evaluate section)")
        return int(v)


def _apgd_t(model: nn.Module, eps: float, b: AttackBudget, n_classes: int) -> Callable:
    from pyautoattack.autopgd_base import APGDAttack_targeted
    if n_classes < 4:
        raise ParamError(f"apgd-t's targeted DLR loss needs at least 4 classes, the model has {n_classes}")
    a = APGDAttack_targeted(model, n_iter=b.need("member_steps", "apgd-t"), norm=_NORM[b.norm], n_restarts=b.restarts, eps=eps,
                            seed=b.seed, n_target_classes=min(b.need("n_target_classes", "apgd-t"),
                                                              n_classes - 1),
                            device=model_device(model))
    return a.perturb


def _fab_t(model: nn.Module, eps: float, b: AttackBudget, n_classes: int) -> Callable:
    from pyautoattack.fab_pt import FABAttack_PT
    a = FABAttack_PT(model, norm=_NORM[b.norm], n_restarts=b.restarts, n_iter=b.need("member_steps", "fab-t"), eps=eps,
                     seed=b.seed, targeted=True, device=model_device(model),
                     n_target_classes=min(b.need("n_target_classes", "fab-t"), n_classes - 1))
    return a.perturb


def _square(model: nn.Module, eps: float, b: AttackBudget, n_classes: int) -> Callable:
    from pyautoattack.square import SquareAttack
    a = SquareAttack(model, norm=_NORM[b.norm], n_queries=b.need("square_queries", "square"), eps=eps,
                     p_init=0.8, n_restarts=b.restarts, seed=b.seed, loss="margin", resc_schedule=True,
                     device=model_device(model))
    return a.perturb


#: the pyautoattack members by our attack name: (model, eps, budget, n_classes) -> perturb(x, y)
MEMBERS: dict[str, Callable[[nn.Module, float, AttackBudget, int], Callable]] = {
    "apgd-t": _apgd_t, "fab-t": _fab_t, "square": _square}


@torch.no_grad()
def _n_classes(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(x[:1]).shape[1])


def attack_points(name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float,
                  budget: AttackBudget, progress: bool = False) -> torch.Tensor:
    """The point the AutoAttack member ``name`` returns for each sample, attacking the labels
    ``target`` (pass F(x) to test robustness whatever the accuracy), projected onto B_eps(x) and
    [0, 1]; ``x`` itself where it found nothing. ``eps == 0`` returns ``x``."""
    if name not in MEMBERS:
        raise ParamError(f"unknown AutoAttack member {name!r}; choose one of {sorted(MEMBERS)}")
    if eps == 0 or len(x) == 0:
        return x.clone()
    dev = model_device(model)
    out = []
    starts = range(0, len(x), budget.batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"{name} {budget.norm} eps={eps:g}", leave=False)
    # pyautoattack seeds torch's CPU and every CUDA generator (torch.cuda.random.manual_seed), whatever
    # the model's device: fork them all, so the caller's random streams stay as they were
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with eval_mode(model), torch.random.fork_rng(devices=cuda):
        perturb = MEMBERS[name](model, eps, budget, _n_classes(model, x[:1].to(dev)))
        for lo in starts:
            xb = x[lo:lo + budget.batch_size].detach().to(dev, torch.float32)
            yb = target[lo:lo + budget.batch_size].detach().to(dev, torch.long)
            adv = perturb(xb.clone(), yb.clone()).detach()
            out.append(project(adv, xb, eps, budget.norm).to(x.device))
    return torch.cat(out)


@torch.no_grad()
def attack_predictions(name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float,
                       budget: AttackBudget, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax f(x'), softmax(f(x'))_target)`` at the points of :func:`attack_points`, the model
    in eval mode (the verdict and the confidence the attack left to the target)."""
    with torch.enable_grad():
        adv = attack_points(name, model, x, target, eps, budget, progress)
    dev = model_device(model)
    preds, confs = [], []
    with eval_mode(model):
        for lo in range(0, len(adv), budget.batch_size):
            logits = model(adv[lo:lo + budget.batch_size].to(dev)).float()
            t = target[lo:lo + budget.batch_size].to(dev).long()
            preds.append(logits.argmax(1).to(x.device))
            confs.append(F.softmax(logits, 1).gather(1, t[:, None]).squeeze(1).to(x.device))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=x.device), torch.empty(0, device=x.device)
    return torch.cat(preds), torch.cat(confs)
