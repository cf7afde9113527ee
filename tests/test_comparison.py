"""reports/comparison.md: every way of combining the core with a robust model, each point chosen on
validation records and scored on test, paired against the core and the S_ERI composition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robust_abstain.analysis.choose import best_model
from robust_abstain.errors import DataError
from robust_abstain.report import build_report
from robust_abstain.report.claims import comparison_claim
from robust_abstain.report.comparison import (Baselines, Method, comparison_rows, mixing_methods, model_method)
from test_report import N, TAUS, adaptive_frame, empirical, zoo


def _mixing(split: str, seed: int) -> pd.DataFrame:
    """Two linear-mixing weights: alpha 0.25 accurate, 0.75 robust (records of empirical())."""
    s = "val" if split == "val" else "test"
    frames = []
    for alpha, (acc, r1) in ((0.25, (0.9, 0.4)), (0.75, (0.8, 0.8))):
        d = empirical(acc, r1, 0.5, seed + int(100 * alpha), s)
        frames.append(d.assign(method="linear", alpha=alpha)[["method", "alpha", *d.columns]])
    return pd.concat(frames, ignore_index=True)


def _net(records: pd.DataFrame, seed: int) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    score = g.uniform(0, 1, len(records))
    return records.assign(net_score=score, net_score_min=score * g.uniform(0.5, 1.0, len(records)))


def test_the_mixing_weight_is_chosen_on_validation_and_scored_on_test():
    core = zoo()[0]
    val, test = _mixing("val", 5), _mixing("test", 6)
    # validation accuracy: core 87 %, alpha 0.25 85 %, alpha 0.75 83 %; the highest robust accuracy
    # among the weights losing at most max_nat_drop, else the highest overall (infeasible)
    cands = [(repr(float(a)), d.drop(columns=["method", "alpha"])) for a, d in val.groupby("alpha")]
    assert best_model(cands, core.val_records, 0.2) == ("0.75", True)
    assert best_model(cands, core.val_records, 0.03) == ("0.25", True)   # only the accurate one is close enough
    assert best_model(cands, core.val_records, 0.01) == ("0.75", False)
    (m,) = mixing_methods(test, val, core, 0.2, "base")
    picked = test[test["alpha"] == 0.75]
    assert m.label == "base linear@α=0.75" and m.correct.mean() == pytest.approx(
        (picked["pred"] == picked["label"]).mean())
    assert [f[0] for f in m.front] == ["linear@0.25", "linear@0.75"]


def test_comparison_pairs_only_the_same_test_points():
    core = model_method(zoo()[0], "core")
    other = Method("x", "x", "records", core.index[::-1].copy(), core.correct, core.robust)
    with pytest.raises(DataError, match="other test points"):
        comparison_rows([core, other], core, seed=0)
    rows = comparison_rows([core, model_method(zoo()[1], "robust model")], core, seed=0)
    assert rows[0].d_nat_core.value == 0 and rows[0].d_rob_ref is None      # no S_ERI composition given


def test_build_report_writes_the_comparison_with_every_method(tmp_path):
    models = zoo()
    base = next(m for m in models if m.name == "base")
    adaptive = {m.name: adaptive_frame(40 + i) for i, m in enumerate(models) if m.role != "core"}
    net_adv = pd.concat([adaptive_frame(99).assign(selector=lambda d: d["selector"].str.replace("SR", "NET"))
                         .query("selector != 'ERI'")], ignore_index=True)
    baselines = Baselines("base", _net(base.records, 1), _net(base.val_records, 2), net_adv,
                          _mixing("test", 6), _mixing("val", 5))
    m = build_report(models, tmp_path, 0.05, adaptive=adaptive, taus=TAUS, max_nat_drop=0.2,
                     baselines=baselines)
    text = (tmp_path / "comparison.md").read_text()
    for family in ("composition, S_ERI", "composition, S_SR", "cascade of compositions",
                   "selection network S_NET", "linear mixing", "robust model"):
        assert f"| {family}" in text
    assert (tmp_path / "figures" / "comparison.png").stat().st_size > 10_000
    key = "comparison/linear_mixing"
    assert m[f"{key}/d_rob_acc_vs_eri_lo"] <= m[f"{key}/d_rob_acc_vs_eri"] <= m[f"{key}/d_rob_acc_vs_eri_hi"]
    assert m[f"{key}/rob_acc"] == pytest.approx(m[f"{key}/d_rob_acc"] + m["core/rob_acc"])
    lines = comparison_claim(m)
    assert any(l.startswith("- linear mixing: R_rob^acc") for l in lines) and len(lines) >= 4
