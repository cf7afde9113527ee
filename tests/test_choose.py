"""Choices made on validation records (choose.py): the tau grid, the matched tau, the selectors a
model is composed with, and the report's params."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robust_abstain.analysis.choose import ReportParams, composed_specs, matched_tau, sr_tau, tau_grid
from robust_abstain.analysis.selectors import eri, softmax_response
from robust_abstain.errors import ParamError
from robust_abstain.params import load_params


def _records(conf, flip2):
    """6 points, all accurate and robust at eps; APGD-CE at 2 eps flips those in ``flip2``."""
    n = len(conf)
    pred = np.zeros(n, dtype=int)
    adv2 = np.where(np.asarray(flip2, bool), 1, 0)
    return pd.DataFrame({"index": np.arange(n), "label": pred, "pred": pred, "conf": conf, "eps": 0.1,
                         "adv_pred_1x": pred, "adv_conf_1x": np.asarray(conf) - 0.05,
                         "adv_pred_2x": adv2, "adv_conf_2x": np.where(adv2 == 1, 0.3, np.asarray(conf) - 0.1),
                         "sr_pred_1x": -1, "sr_conf_1x": np.nan, "sr_pred_2x": pred,
                         "sr_conf_2x": np.asarray(conf) - 0.1})


def test_tau_grid_is_bounded_so_selector_names_stay_unique():
    assert tau_grid(34)[1] == 0.03 and tau_grid(100)[-1] == 0.99
    for bad in (1, 101):
        with pytest.raises(ParamError):
            tau_grid(bad)


def test_matched_tau_is_searched_at_or_above_one_half():
    """Below 1/2, S_SR's robust selection is a subset of S_ERI's (the attacks stop at a flip), and
    at tau = 0 it equals S_ERI's: a search from 0 would always pick 0. From 1/2 on: ERI robustly
    selects 4 of 6 (points 0-3); SR@0.5 all points with worst confidence >= 0.5 and no flip:
    0, 1, 2 (0.85, 0.75, 0.55); SR@0.7: 0, 1; SR@0.8: 0. The closest to 4/6 is 0.5."""
    df = _records([0.95, 0.85, 0.65, 0.55, 0.9, 0.9], [0, 0, 0, 0, 1, 1])
    assert eri(df).robust_selection == pytest.approx(4 / 6)
    np.testing.assert_array_equal(softmax_response(df, 0.0).robustly_selected, eri(df).robustly_selected)
    assert softmax_response(df, 0.5).robust_selection == pytest.approx(3 / 6)
    assert matched_tau(df, [0.0, 0.3, 0.5, 0.7, 0.8]) == 0.5
    assert matched_tau(df, [0.0, 0.3]) is None


def _sr_records(conf, wrong):
    """Points robust at 2 eps by every attack (APGD-conf run), every attack's confidence ``conf``;
    F wrong on ``wrong``."""
    n = len(conf)
    label = np.zeros(n, dtype=int)
    pred = np.where(np.asarray(wrong, bool), 1, 0)
    conf = np.asarray(conf, float)
    return pd.DataFrame({"index": np.arange(n), "label": label, "pred": pred, "conf": conf, "eps": 0.1,
                         "adv_pred_1x": pred, "adv_conf_1x": conf, "adv_pred_2x": pred, "adv_conf_2x": conf,
                         "sr_pred_1x": pred, "sr_conf_1x": conf, "sr_pred_2x": pred, "sr_conf_2x": conf})


def test_composed_specs_choose_each_threshold_on_validation():
    """Robust model: conf 0.9 on points 0-3 (right), 0.6 on 4-9 (wrong), 0.3 on 10-19 (right); the
    core right everywhere, never robust. SR@0.5 answers 4-9 with the robust model: R_nat drops by
    6/20 (infeasible at max_nat_drop 0.01); SR@0.8 answers 0-3 only: no drop, sound R_rob^acc 4/20.
    Without APGD-conf evidence only S_ERI is composed."""
    robust = _sr_records(np.r_[np.full(4, 0.9), np.full(6, 0.6), np.full(10, 0.3)],
                         np.r_[np.zeros(4), np.ones(6), np.zeros(10)])
    core = _records(np.full(20, 0.9), np.ones(20))
    core["adv_pred_1x"] = 1                                   # never robust
    specs = composed_specs(robust, core, [0.5, 0.8], max_nat_drop=0.01)
    assert [s.name for s in specs] == ["ERI", "SR@0.80"] and specs[1].tau == 0.8
    assert sr_tau(robust, core, [0.5, 0.8], 0.01) == 0.8
    # at max_nat_drop 0.5 SR@0.5 is feasible too, with the same sound R_rob^acc (4/20: 4-9 are
    # wrong): the tie goes to the higher natural accuracy
    assert sr_tau(robust, core, [0.5, 0.8], 0.5) == 0.8
    no_sr = robust.assign(sr_conf_1x=np.nan, sr_conf_2x=np.nan, sr_pred_1x=-1, sr_pred_2x=-1)
    assert [s.name for s in composed_specs(no_sr, core, [0.5, 0.8], 0.01)] == ["ERI"]
    assert sr_tau(no_sr, core, [0.5, 0.8], 0.01) is None


def test_report_params_are_a_typed_section():
    ok = {"n_taus": 34, "max_nat_drop": 0.01, "warn_nat_drop": 0.03, "seed": 0.0}
    rp = ReportParams.from_params(ok, "report")
    assert (rp.n_taus, rp.max_nat_drop, rp.warn_nat_drop, rp.seed) == (34, 0.01, 0.03, 0)
    assert isinstance(rp.seed, int) and len(rp.tau_grid) == 34 and rp.tau_grid[-1] == 0.99
    for bad in ({**ok, "tau": 3}, {k: v for k, v in ok.items() if k != "seed"}, {**ok, "n_taus": 101},
                {**ok, "n_taus": 1}, {**ok, "max_nat_drop": 1.5}, {**ok, "seed": -1}):
        with pytest.raises(ParamError, match="report"):
            ReportParams.from_params(bad, "report")
    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "params-paper.yaml", "params-full.yaml"):
        ReportParams.from_params(load_params(root / name)["report"], "report")
