"""reports/comparison.md: every way of combining the core with a robust model, each point chosen on
validation records and scored on test, paired against the core and the S_ERI composition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robust_abstain.analysis.choose import best_model
from robust_abstain.analysis.records import accurate, robust
from robust_abstain.errors import DataError
from robust_abstain.report import build_report
from robust_abstain.report.claims import comparison_claim
from robust_abstain.report.comparison import (SAME_MODEL, Baselines, Method, comparison_rows, mixing_methods,
                                              model_method, net_method)
from test_report import TAUS, adaptive_frame, empirical, zoo


def _mixing(split: str, seed: int) -> pd.DataFrame:
    """Two linear-mixing weights (records of empirical()): on validation alpha 0.25 accurate, 0.75
    robust; on test 0.25 is the more robust too, so a choice made on test would differ."""
    s = "val" if split == "val" else "test"
    rates = {"val": ((0.25, (0.9, 0.4)), (0.75, (0.8, 0.8))), "test": ((0.25, (0.9, 0.9)), (0.75, (0.8, 0.3)))}
    frames = []
    for alpha, (acc, r1) in rates[s]:
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
                   "selection network S_NET", "linear mixing", "robust model", SAME_MODEL):
        assert f"| {family}" in text
    # the baselines combine base with the core: they are also paired with base's best composition
    (same,) = [line for line in text.splitlines() if line.startswith(f"| {SAME_MODEL}")]
    assert "| base+" in same and "the best composition of the same robust model" in text
    assert (tmp_path / "figures" / "comparison.png").stat().st_size > 10_000
    key = "comparison/linear_mixing"
    assert m[f"{key}/d_rob_acc_vs_eri_lo"] <= m[f"{key}/d_rob_acc_vs_eri"] <= m[f"{key}/d_rob_acc_vs_eri_hi"]
    assert m[f"{key}/rob_acc"] == pytest.approx(m[f"{key}/d_rob_acc"] + m["core/rob_acc"])
    lines = comparison_claim(m)
    assert any(l.startswith("- linear mixing: R_rob^acc") for l in lines) and len(lines) >= 4
    assert f"{key}/d_rob_acc_vs_same" in m and "comparison/composition_S_SR/d_rob_acc_vs_same" not in m
    assert any(l.startswith("- linear mixing:") and "same robust model" in l for l in lines)
    assert any(l.startswith("- composition, S_SR: R_rob^acc") for l in lines)     # the family's own name


def test_the_selection_networks_tau_is_chosen_on_validation_whatever_the_test_records_say():
    models = zoo()
    core, base = models[0], next(m for m in models if m.name == "base")
    adaptive = adaptive_frame(99).assign(selector=lambda d: d["selector"].str.replace("SR", "NET"))
    adaptive = adaptive[adaptive["selector"] != "ERI"]

    def oracle(d):      # a network that knows where base is accurate and robust on B_2eps
        score = np.where(accurate(d) & robust(d, 2), 0.9, 0.1)
        return d.assign(net_score=score, net_score_min=score)

    def flat(d):        # one score everywhere: tau <= 0.5 selects every point, above none
        return d.assign(net_score=0.5, net_score_min=0.5)

    # validation by the oracle: the lowest tau above its low score; flat: the core alone (tau above 0.5)
    for val, tau in ((oracle, "0.20"), (flat, "0.60")):
        for test in (oracle, flat):
            m = net_method(test(base.records), val(base.val_records), adaptive, core, TAUS, 0.01, "base")
            assert m.label == f"base+NET@{tau}" and m.baseline
