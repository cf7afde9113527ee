"""The report stage's library: records in, Markdown tables and PNG figures out (see build.py)."""

from .build import ROLES, ModelInfo, build_report, matched_pairs, model_metrics

__all__ = ["ModelInfo", "ROLES", "build_report", "matched_pairs", "model_metrics"]
