"""Metrics (1)/(2), splits, and selectors (S_ERI, S_SR, S_CRI) on hand-built records."""

import numpy as np
import pandas as pd
import pytest

from robust_abstain import metrics as M
from robust_abstain.errors import DataError, ParamError
from robust_abstain.records import ABSTAIN
from robust_abstain.selectors import (TAU_GRID, Selection, abstain_metrics, certified_abstain_metrics,
                                      cri, eri, pareto_front, softmax_response,
                                      softmax_response_sweep)


def empirical_ten() -> pd.DataFrame:
    """10 points; comments: accurate / robust at eps (r1) / robust at 2 eps (r2)."""
    rows = [  # label, pred, adv1, adv2, conf, sr_pred_1x, sr_conf_1x, sr_pred_2x, sr_conf_2x
        (0, 0, 0, 0, 0.95, 0, 0.94, 0, 0.93),    # acc  r1 r2
        (1, 1, 1, 1, 0.60, 1, 0.55, 1, 0.50),    # acc  r1 r2
        (2, 2, 2, 0, 0.90, 2, 0.88, 2, 0.85),    # acc  r1, NOT r2 (robust at eps, not 2 eps)
        (3, 3, 0, 3, 0.99, 3, 0.95, 1, 0.60),    # acc  not r1 (2x attack missed: still not r2)
        (4, 4, 1, 1, 0.50, 4, 0.45, 4, 0.40),    # acc  non-robust
        (5, 0, 0, 0, 0.97, 0, 0.89, 0, 0.95),    # inacc r1 r2 (robust misclassification)
        (6, 0, 0, 1, 0.80, 0, 0.75, 0, 0.70),    # inacc r1 not r2
        (7, 0, 1, 0, 0.70, 0, 0.65, 0, 0.60),    # inacc not r1 -> not r2 (per-sample worst case)
        (8, 0, 1, 1, 0.40, 0, 0.35, 0, 0.30),    # inacc non-robust
        (9, 9, 9, 9, 0.92, 9, 0.915, 9, 0.91),   # acc  r1 r2
    ]
    df = pd.DataFrame(rows, columns=["label", "pred", "adv_pred_1x", "adv_pred_2x", "conf",
                                     "sr_pred_1x", "sr_conf_1x", "sr_pred_2x", "sr_conf_2x"])
    df.insert(0, "index", np.arange(100, 110))
    df["eps"] = 0.1
    return df


def certified_eight() -> pd.DataFrame:
    rows = [  # label, smooth_pred, cert_pred, cert_radius
        (0, 0, 0, 0.60),          # correct, radius >= 2 eps
        (1, 1, 1, 0.30),          # correct, eps <= radius < 2 eps
        (2, 2, 2, 0.10),          # correct, small radius
        (3, 0, 0, 0.70),          # certified wrong at both radii
        (4, 0, 0, 0.30),          # certified wrong at eps only
        (5, ABSTAIN, ABSTAIN, 0.0),
        (6, 6, ABSTAIN, 0.0),     # PREDICT right, CERTIFY abstains
        (7, 1, 1, 0.05),          # wrong, tiny radius
    ]
    df = pd.DataFrame(rows, columns=["label", "smooth_pred", "cert_pred", "cert_radius"])
    df.insert(0, "index", np.arange(8))
    df["pred"], df["conf"] = df["label"], 0.9
    return df


def test_natural_robust_accuracy_and_inaccuracy_by_hand():
    df = empirical_ten()
    assert M.natural_accuracy(df) == pytest.approx(0.6)
    assert M.robust_accuracy(df, 1) == pytest.approx(0.4)
    assert M.robust_inaccuracy(df, 1) == pytest.approx(0.2)
    assert M.robust_accuracy(df, 2) == pytest.approx(0.3)
    assert M.robust_inaccuracy(df, 2) == pytest.approx(0.1)


def test_splits_tables_7_8_sum_to_one():
    df = empirical_ten()
    s1, s2 = M.splits(df, 1), M.splits(df, 2)
    assert s1 == pytest.approx({"rob_acc": 0.4, "rob_inacc": 0.2, "nonrob_acc": 0.2, "nonrob_inacc": 0.2})
    assert s2 == pytest.approx({"rob_acc": 0.3, "rob_inacc": 0.1, "nonrob_acc": 0.3, "nonrob_inacc": 0.3})
    assert sum(s1.values()) == pytest.approx(1) and sum(s2.values()) == pytest.approx(1)
    summ = M.summary(df, 2)
    assert summ["n"] == 10 and summ["nat_acc"] == pytest.approx(0.6)
    assert summ["rob_acc"] == pytest.approx(0.3) and summ["rob_inacc"] == pytest.approx(0.1)
    with pytest.raises(ParamError):
        M.summary(df, 3)


def test_per_sample_worst_case_robust_at_2x_attack_but_not_1x():
    df = empirical_ten()
    # point 3 (index 103) and 7 (107): the 2 eps attack missed, the eps attack did not
    row3, row7 = df.iloc[3], df.iloc[7]
    assert row3["adv_pred_2x"] == row3["pred"] and row7["adv_pred_2x"] == row7["pred"]
    s = eri(df)
    assert not s.selected[3] and not s.robustly_selected[3]
    assert not s.robustly_selected[7]


def test_eri_two_eps_rule():
    s = eri(empirical_ten())
    # point 2: robust at eps (selected) but not at 2 eps -> NOT robustly selected (Appendix A.3)
    assert s.selected[2] and not s.robustly_selected[2]
    assert s.selection_rate == pytest.approx(0.6)
    assert s.robust_selection == pytest.approx(0.4)
    a = abstain_metrics(empirical_ten(), s)
    assert a["rob_sel"] == pytest.approx(0.4)
    assert a["rob_acc"] == pytest.approx(0.3)           # 100, 101, 109
    assert a["rob_acc_on_sel"] == pytest.approx(0.75)
    assert a["rob_inacc"] == pytest.approx(0.1)          # 105
    assert a["nat_acc_on_sel"] == pytest.approx(4 / 6)


def test_softmax_response_robust_selection_with_tau():
    df = empirical_ten()
    s = softmax_response(df, 0.9)
    assert s.name == "SR@0.90" and s.params["tau"] == 0.9
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 2, 3, 5, 9])
    # 2: conf pushed below tau at 2 eps; 3: prediction flipped; 5: conf below tau at eps (worst case)
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 9])
    a = abstain_metrics(df, s)
    assert a["selected"] == pytest.approx(0.5) and a["rob_sel"] == pytest.approx(0.2)
    assert a["rob_acc_on_sel"] == pytest.approx(1.0) and a["rob_acc"] == pytest.approx(0.2)
    s0 = softmax_response(df, 0.0)
    assert s0.selected.all() and s0.robust_selection == pytest.approx(0.9)  # only 3 flips
    sweep = softmax_response_sweep(df)
    assert len(sweep) == len(TAU_GRID) == 100 and TAU_GRID[0] == 0 and TAU_GRID[-1] == 0.99
    rs = [x.robust_selection for x in sweep]
    assert all(a >= b for a, b in zip(rs, rs[1:]))  # monotone in tau
    with pytest.raises(ParamError):
        softmax_response(df, 1.5)


def test_softmax_response_without_evidence_is_an_error():
    df = empirical_ten()
    df["sr_conf_2x"] = np.nan
    df["sr_conf_1x"] = np.nan
    with pytest.raises(DataError, match="APGD-conf"):
        softmax_response(df, 0.5)


def test_certified_metrics_by_hand():
    df = certified_eight()
    assert M.certified_natural_accuracy(df) == pytest.approx(0.5)
    s1 = M.certified_summary(df, 0.25)
    assert s1["rob_acc"] == pytest.approx(0.25) and s1["rob_inacc"] == pytest.approx(0.25)
    assert s1["abstain"] == pytest.approx(0.25)
    s2 = M.certified_summary(df, 0.5)
    assert s2["rob_acc"] == pytest.approx(0.125) and s2["rob_inacc"] == pytest.approx(0.125)
    s0 = M.certified_summary(df, 0.0)
    assert s0["rob_acc"] == pytest.approx(0.375) and s0["rob_inacc"] == pytest.approx(0.375)
    curve = M.certified_accuracy_curve(df, np.array([0.0, 0.25, 0.5, 1.0]))
    np.testing.assert_allclose(curve, [0.375, 0.25, 0.125, 0.0])


def test_cri_sound_and_paper_rules():
    df = certified_eight()
    sound, paper = cri(df, 0.25, "sound"), cri(df, 0.25, "paper")
    assert sound.name == "CRI[sound]" and paper.name == "CRI[paper]"
    np.testing.assert_array_equal(np.flatnonzero(sound.selected), [0, 1, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(sound.robustly_selected), [0, 3])
    np.testing.assert_array_equal(np.flatnonzero(paper.robustly_selected), [0, 1, 3, 4])
    a = certified_abstain_metrics(df, sound)
    assert a["rob_sel"] == pytest.approx(0.25) and a["rob_acc"] == pytest.approx(0.125)
    assert a["rob_acc_on_sel"] == pytest.approx(0.5) and a["rob_inacc"] == pytest.approx(0.125)
    b = certified_abstain_metrics(df, paper)
    assert b["rob_sel"] == pytest.approx(0.5) and b["rob_acc"] == pytest.approx(0.25)
    with pytest.raises(ParamError):
        cri(df, 0.25, "optimistic")


def test_alignment_by_index_and_errors():
    df = empirical_ten()
    shuffled = df.sample(frac=1.0, random_state=0)
    a, b = M.align(df, shuffled)
    pd.testing.assert_frame_equal(a, b)
    # a selection computed on shuffled records realigns to the original order
    s = eri(shuffled).aligned_to(df["index"].to_numpy()[::-1])
    np.testing.assert_array_equal(s.robustly_selected, eri(df).robustly_selected[::-1])
    with pytest.raises(DataError, match="different test points"):
        M.align(df, df.iloc[:9])
    with pytest.raises(DataError, match="more than once"):
        M.by_index(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(DataError, match="robustly selected but not selected"):
        Selection("bad", np.arange(2), np.array([False, True]), np.array([True, True]))


def test_pareto_front():
    pts = [(0.1, 0.9), (0.2, 0.8), (0.2, 0.8), (0.15, 0.7), (float("nan"), 1.0), (0.3, 0.5)]
    assert pareto_front(pts) == [0, 1, 2, 5]
    assert pareto_front([]) == []
