"""The report stage's library: records in, Markdown tables and PNG figures out (see build.py)."""

from ..analysis.choose import ReportParams
from .build import build_report, metrics_json
from .models import ROLES, ModelInfo
from .summary import matched_pairs, model_metrics

__all__ = ["ModelInfo", "ROLES", "ReportParams", "build_report", "matched_pairs", "metrics_json",
           "model_metrics"]
