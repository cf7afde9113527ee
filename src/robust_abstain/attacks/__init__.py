"""Attacks on inputs in [0, 1]: :func:`pgd` for training (any per-sample objective) and
:class:`APGD` for evaluation (APGD-CE and APGD-conf (17), registered in :data:`ATTACKS`). Every
attack returns points inside the eps-ball (Linf or L2) around the clean input and inside [0, 1];
:func:`eval_mode` is the model mode of every attack and certification."""

from .apgd import APGD, max_other_confidence, worst_case_predictions
from .apgd_state import checkpoints
from .common import NORMS, eval_mode, l2_norm, per_sample
from .pgd import pgd, project, random_init
from .registry import ATTACKS, AttackInfo

__all__ = ["APGD", "ATTACKS", "AttackInfo", "NORMS", "checkpoints", "eval_mode", "l2_norm",
           "max_other_confidence", "per_sample", "pgd", "project", "random_init",
           "worst_case_predictions"]
