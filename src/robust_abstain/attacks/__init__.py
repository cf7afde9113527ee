"""Attacks on inputs in [0, 1]: :func:`pgd` for training (any per-sample objective) and
:class:`APGD` for evaluation (APGD-CE and APGD-conf (17)). Every attack returns points inside the
eps-ball (Linf or L2) around the clean input and inside [0, 1]."""

from .apgd import APGD, checkpoints, max_other_confidence, worst_case_predictions
from .pgd import pgd, project, random_init

__all__ = ["APGD", "checkpoints", "max_other_confidence", "pgd", "project", "random_init",
           "worst_case_predictions"]
