"""Metrics (1)/(2), splits, and selectors (S_ERI, S_SR, S_CRI) on hand-built records.

Robustness at a scale is the AND over every attack run at scales 1 .. s (APGD-CE, and APGD-conf
where it was run); S_SR robust selection also needs every attack's lowest confidence at 2 eps to
stay >= tau (issue 9, item 6)."""

import numpy as np
import pandas as pd
import pytest

import torch

from robust_abstain.analysis import metrics as M
from robust_abstain.analysis import records as R
from robust_abstain.analysis.abstain import abstain_metrics, certified_abstain_metrics, pareto_front
from robust_abstain.analysis.records import ABSTAIN
from robust_abstain.analysis.selectors import (SELECTORS, TAU_GRID, Selection, SelectorSpec, cri, eri,
                                               selections, selector_grid, softmax_response,
                                               softmax_response_sweep)
from robust_abstain.errors import DataError, ParamError


def empirical_ten() -> pd.DataFrame:
    """10 points; comments: accurate / robust at eps (r1) / robust at 2 eps (r2), by every attack.
    APGD-CE's confidences (adv_conf_1x/2x) are NaN (not recorded), so the worst confidence is that
    of APGD-conf and the clean point."""
    rows = [  # label, pred, adv1, adv2, conf, sr_pred_1x, sr_conf_1x, sr_pred_2x, sr_conf_2x
        (0, 0, 0, 0, 0.95, 0, 0.94, 0, 0.93),    # acc  r1 r2
        (1, 1, 1, 1, 0.60, 1, 0.55, 1, 0.50),    # acc  r1 r2
        (2, 2, 2, 0, 0.90, 2, 0.88, 2, 0.85),    # acc  r1, NOT r2 (robust at eps, not 2 eps)
        (3, 3, 0, 3, 0.99, 3, 0.95, 3, 0.96),    # acc  not r1 (both 2x attacks missed: still not r2)
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
    df["adv_conf_1x"] = df["adv_conf_2x"] = np.nan
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
    # point 3 (index 103) and 7 (107): both 2 eps attacks missed, APGD-CE at eps did not
    row3, row7 = df.iloc[3], df.iloc[7]
    for row in (row3, row7):
        assert row["adv_pred_2x"] == row["pred"] and row["sr_pred_2x"] == row["pred"]
        assert row["adv_pred_1x"] != row["pred"]
    s = eri(df)
    assert not s.selected[3] and not s.robustly_selected[3]
    assert not s.robustly_selected[7]


def test_eri_two_eps_rule():
    s = eri(empirical_ten())
    # point 2: robust at eps (selected) but not at 2 eps -> NOT robustly selected (Appendix A.3)
    assert s.selected[2] and not s.robustly_selected[2]
    assert s.selection_rate == pytest.approx(0.6)
    assert s.robust_selection == pytest.approx(0.4)
    (a,) = abstain_metrics(empirical_ten(), [s])
    assert a.rob_sel == pytest.approx(0.4)
    assert a.rob_acc == pytest.approx(0.3)           # 100, 101, 109
    assert a.rob_acc_on_sel == pytest.approx(0.75)
    assert a.rob_inacc == pytest.approx(0.1)          # 105
    assert a.nat_acc_on_sel == pytest.approx(4 / 6)


def test_softmax_response_robust_selection_with_tau():
    df = empirical_ten()
    s = softmax_response(df, 0.9)
    assert s.name == "SR@0.90" and s.params["tau"] == 0.9
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 2, 3, 5, 9])
    # robust on B_2eps by every attack: 0, 1, 5, 9; of the selected 0, 5, 9 the worst confidence
    # (min of conf, sr_conf_1x, sr_conf_2x) is 0: 0.93, 5: 0.89 < 0.9 (at eps: worst case), 9: 0.91.
    # 2: APGD-CE flipped it at 2 eps (and APGD-conf reached 0.85); 3: APGD-CE flipped it at eps
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 9])
    (a,) = abstain_metrics(df, [s])
    assert a.selected == pytest.approx(0.5) and a.rob_sel == pytest.approx(0.2)
    assert a.rob_acc_on_sel == pytest.approx(1.0) and a.rob_acc == pytest.approx(0.2)
    # tau = 0 selects every point, yet robust selection still needs F robust on B_2eps by every
    # attack (an attack stops at its first flip, so its confidence there is no minimum): the 4
    # points 0, 1, 5, 9, as S_ERI
    s0 = softmax_response(df, 0.0)
    assert s0.selected.all() and s0.robust_selection == pytest.approx(0.4)
    np.testing.assert_array_equal(s0.robustly_selected, eri(df).robustly_selected)
    sweep = softmax_response_sweep(df)
    assert len(sweep) == len(TAU_GRID) == 100 and TAU_GRID[0] == 0 and TAU_GRID[-1] == 0.99
    rs = [x.robust_selection for x in sweep]
    assert all(a >= b for a, b in zip(rs, rs[1:]))  # monotone in tau
    with pytest.raises(ParamError):
        softmax_response(df, 1.5)


def attacks_six() -> pd.DataFrame:
    """6 points (eps = 0.1), conf 0.95 everywhere; which attack changes F(x), and where:
    0: none;  1: APGD-conf at 2 eps only;  2: APGD-conf at eps;  3: none, APGD-conf not run (-1, NaN);
    4: none, but APGD-CE pushes f(x')_{F(x)} to 0.50 at 2 eps (APGD-conf only to 0.91);
    5: APGD-CE at eps (and at 2 eps)."""
    nan = np.nan
    rows = [  # label, pred, adv_pred_1x, adv_conf_1x, adv_pred_2x, adv_conf_2x,
              #   sr_pred_1x, sr_conf_1x, sr_pred_2x, sr_conf_2x
        (0, 0, 0, 0.90, 0, 0.85, 0, 0.92, 0, 0.88),
        (1, 1, 1, 0.90, 1, 0.85, 1, 0.92, 2, 0.40),
        (2, 2, 2, 0.90, 2, 0.85, 0, 0.30, 0, 0.30),
        (3, 3, 3, 0.90, 3, 0.80, -1, nan, -1, nan),
        (4, 4, 4, 0.90, 4, 0.50, 4, 0.93, 4, 0.91),
        (5, 5, 7, 0.30, 7, 0.20, 5, 0.93, 5, 0.90),
    ]
    df = pd.DataFrame(rows, columns=["label", "pred", "adv_pred_1x", "adv_conf_1x", "adv_pred_2x",
                                     "adv_conf_2x", "sr_pred_1x", "sr_conf_1x", "sr_pred_2x",
                                     "sr_conf_2x"])
    df.insert(0, "index", np.arange(6))
    df["conf"], df["eps"] = 0.95, 0.1
    return df


def test_robust_is_the_and_over_every_attack_run_at_scales_up_to_s():
    """Item 6: a point APGD-CE leaves at F(x) but APGD-conf moves is not robust; sr_pred = -1 is
    "not run" and counts as no evidence against robustness (APGD-CE's -1 would be a change)."""
    from robust_abstain.analysis.records import robust
    df = attacks_six()
    np.testing.assert_array_equal(robust(df, 1), [True, True, False, True, True, False])
    np.testing.assert_array_equal(robust(df, 2), [True, False, False, True, True, False])
    s = eri(df)
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 1, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 3, 4])
    # (1): all six accurate; robust-accurate at eps 4/6, at 2 eps 3/6
    assert M.robust_accuracy(df, 1) == pytest.approx(4 / 6)
    assert M.robust_accuracy(df, 2) == pytest.approx(3 / 6)
    df.loc[3, "adv_pred_1x"] = ABSTAIN
    assert not robust(df, 1)[3]


def test_worst_confidence_is_the_nanmin_of_clean_and_every_attack():
    from robust_abstain.analysis.records import worst_confidence
    df = attacks_six()
    # scale 1: min(conf, adv_conf_1x, sr_conf_1x); scale 2 adds adv_conf_2x, sr_conf_2x; NaN skipped
    np.testing.assert_allclose(worst_confidence(df, 1), [0.90, 0.90, 0.30, 0.90, 0.90, 0.30])
    np.testing.assert_allclose(worst_confidence(df, 2), [0.85, 0.40, 0.30, 0.80, 0.50, 0.20])


def test_softmax_response_robust_selection_needs_apgd_ce_confidence_above_tau():
    """Item 6: at tau = 0.7 point 4 keeps sr_conf_2x = 0.91 >= tau, but APGD-CE reached
    adv_conf_2x = 0.50 < tau, so S_SR is not robustly 1 there; at tau = 0.5 it is (0.50 >= 0.5)."""
    df = attacks_six()
    s = softmax_response(df, 0.7)
    assert s.selected.all()
    assert df.loc[4, "sr_conf_2x"] >= 0.7 and df.loc[4, "sr_pred_2x"] == df.loc[4, "pred"]
    # robust at 2 eps: 0, 3, 4; worst confidence 0.85, 0.80, 0.50 -> 0, 3 at tau = 0.7
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 3])
    np.testing.assert_array_equal(np.flatnonzero(softmax_response(df, 0.5).robustly_selected),
                                  [0, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(softmax_response(df, 0.85).robustly_selected), [0])
    (a,) = abstain_metrics(df, [s])
    assert a.rob_sel == pytest.approx(2 / 6) and a.rob_acc == pytest.approx(2 / 6)


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
    assert a.rob_sel == pytest.approx(0.25) and a.rob_acc == pytest.approx(0.125)
    assert a.rob_acc_on_sel == pytest.approx(0.5) and a.rob_inacc == pytest.approx(0.125)
    b = certified_abstain_metrics(df, paper)
    assert b.rob_sel == pytest.approx(0.5) and b.rob_acc == pytest.approx(0.25)
    with pytest.raises(ParamError):
        cri(df, 0.25, "optimistic")


def test_alignment_by_index_and_errors():
    df = empirical_ten()
    shuffled = df.sample(frac=1.0, random_state=0)
    a, b = R.align(df, shuffled)
    pd.testing.assert_frame_equal(a, b)
    # a selection computed on shuffled records realigns to the original order
    s = eri(shuffled).aligned_to(df["index"].to_numpy()[::-1])
    np.testing.assert_array_equal(s.robustly_selected, eri(df).robustly_selected[::-1])
    with pytest.raises(DataError, match="different test points"):
        R.align(df, df.iloc[:9])
    with pytest.raises(DataError, match="more than once"):
        R.by_index(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(DataError, match="robustly selected but not selected"):
        Selection("bad", np.arange(2), np.array([False, True]), np.array([True, True]))


def test_pareto_front():
    pts = [(0.1, 0.9), (0.2, 0.8), (0.2, 0.8), (0.15, 0.7), (float("nan"), 1.0), (0.3, 0.5)]
    assert pareto_front(pts) == [0, 1, 2, 5]
    assert pareto_front([]) == []


def test_rates_1_2_from_per_point_outcomes_on_arrays_and_tensors():
    """(1)/(2) by hand on the ten points of ``empirical_ten`` at eps: accurate 0-4, 9; robust 0, 1,
    2, 5, 6, 9 -> R_nat 6/10, R_rob^acc 4/10 (0, 1, 2, 9), R_rob^-acc 2/10 (5, 6); the same as the
    record-level functions, and on torch tensors (float32 means)."""
    df = empirical_ten()
    acc, rob = R.accurate(df), R.robust(df, 1)
    assert M.rates(acc, rob) == pytest.approx((0.6, 0.4, 0.2))
    assert M.rates(acc, rob) == (M.natural_accuracy(df), M.robust_accuracy(df), M.robust_inaccuracy(df))
    t = M.rates(torch.tensor(acc), torch.tensor(rob))
    assert all(isinstance(v, float) for v in t) and t == pytest.approx((0.6, 0.4, 0.2))
    with pytest.raises(DataError):
        M.rates(np.array([], bool), np.array([], bool))


def test_model_masks_are_the_splits_at_eps_and_2eps_in_index_order():
    df = empirical_ten()
    k = M.model_masks(df.iloc[::-1])
    np.testing.assert_array_equal(k["nat_acc"], R.accurate(df))
    for tag, s in (("", 1), ("_2x", 2)):
        for name, mask in M.split_masks(df, s).items():
            np.testing.assert_array_equal(k[name + tag], mask, err_msg=name + tag)
    c = M.certified_model_masks(certified_eight(), 0.25, 0.5)
    assert [c[x].mean() for x in ("nat_acc", "rob_acc", "rob_inacc", "rob_acc_2x", "rob_inacc_2x")] == \
        pytest.approx([0.5, 0.25, 0.25, 0.125, 0.125])


def test_selector_registry_drives_specs_names_and_grids():
    """Each selector's metadata: the empirical ones are deployable (SelectorSpec), S_SR takes a
    threshold and needs APGD-conf evidence, S_CRI is certified."""
    assert list(SELECTORS) == ["ERI", "SR", "NET", "CRI"]
    assert [k for k, s in SELECTORS.items() if s.threshold] == ["SR", "NET"]
    assert [k for k, s in SELECTORS.items() if s.certified] == ["CRI"]
    df = empirical_ten()
    assert SelectorSpec("SR", 0.9).name == "SR@0.90" and SelectorSpec("ERI").name == "ERI"
    for bad in (("CRI",), ("ERI", 0.5), ("SR",), ("SR", 1.5)):
        with pytest.raises(ParamError):
            SelectorSpec(*bad)
    grid = selector_grid(df, np.array([0.5, 0.9]))
    assert [s.name for s in grid] == ["ERI", "SR@0.50", "SR@0.90"]
    sels = selections(grid, df)
    assert [s.name for s in sels] == ["ERI", "SR@0.50", "SR@0.90"]
    for spec, sel in zip(grid, sels):     # one sweep gives what each selector alone gives
        np.testing.assert_array_equal(sel.robustly_selected, spec.selection(df).robustly_selected)
    no_sr = df.assign(sr_conf_1x=np.nan, sr_conf_2x=np.nan)
    assert [s.name for s in selector_grid(no_sr, np.array([0.5]))] == ["ERI"]
