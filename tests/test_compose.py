"""Compositions (12), the paper's rule vs the conservative rule, adaptive evidence, cascades."""

import numpy as np
import pandas as pd
import pytest

from robust_abstain.compose import (ADAPTIVE_COLUMNS, Candidate, best_cascade, best_composition,
                                    cascade, cascade_points, compose_adaptive, compose_points,
                                    compose_rule)
from robust_abstain.errors import DataError, ParamError
from robust_abstain.selectors import eri, softmax_response


def records(label, pred, adv1, adv2, conf=None) -> pd.DataFrame:
    n = len(label)
    conf = np.full(n, 0.9) if conf is None else np.asarray(conf, float)
    return pd.DataFrame({"index": np.arange(n), "label": label, "pred": pred, "conf": conf,
                         "eps": 0.1, "adv_pred_1x": adv1, "adv_pred_2x": adv2,
                         "sr_pred_1x": pred, "sr_conf_1x": conf, "sr_pred_2x": pred,
                         "sr_conf_2x": conf})


LABEL = [0, 1, 2, 3, 4, 5]
# robust model R:               0 acc r2 | 1 inacc r2 | 2 acc r1 only | 3 acc nonrob
#                               4 inacc nonrob | 5 inacc r1 only (selected, H(x) wrong)
R = records(LABEL, [0, 9, 2, 3, 9, 9], [0, 9, 2, 7, 8, 9], [0, 9, 7, 7, 8, 8])
# core model C: accurate everywhere; robust at 1, 2, 3, 5
C = records(LABEL, LABEL, [7, 1, 2, 3, 7, 5], [7, 1, 2, 3, 7, 5])
# second robust model R2:       0,1,3,4 robust at 2 eps and accurate; 2 non-robust; 5 acc r1 only
R2 = records(LABEL, LABEL, [0, 1, 7, 3, 4, 5], [0, 1, 7, 3, 4, 7])


def test_composition_natural_and_rule_robust_accuracy_by_hand():
    s = eri(R)
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 1, 2, 5])
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 1])
    m = compose_rule(R, C, s)
    assert m["nat_acc"] == pytest.approx(4 / 6)            # wrong at 1 and 5 (answered by R)
    assert m["rob_acc"] == pytest.approx(4 / 6)            # 0 (R), 2, 3, 5 (core) by the rule
    assert m["rob_acc_conservative"] == pytest.approx(2 / 6)  # 0; 2 (R and core both racc)
    assert m["selected"] == pytest.approx(4 / 6) and m["rob_sel"] == pytest.approx(2 / 6)
    assert m["core_nat_acc"] == pytest.approx(1.0) and m["core_rob_acc"] == pytest.approx(4 / 6)
    assert m["d_nat_acc"] == pytest.approx(-2 / 6) and m["d_rob_acc"] == pytest.approx(0.0)
    pts = compose_points(R, C, s)
    np.testing.assert_array_equal(pts["h_pred"], [0, 9, 2, 3, 4, 9])
    np.testing.assert_array_equal(pts["rob_acc_paper"], [1, 0, 1, 1, 0, 1])


def test_composition_aligns_by_index():
    s = eri(R)
    shuffled = C.sample(frac=1.0, random_state=1)
    assert compose_rule(R, shuffled, s) == compose_rule(R, C, s)
    with pytest.raises(DataError):
        compose_rule(R, C.iloc[:5], s)


def test_composition_with_softmax_response():
    conf = [0.95, 0.99, 0.5, 0.97, 0.6, 0.96]
    r = records(LABEL, [0, 9, 2, 3, 9, 9], [0, 9, 2, 7, 8, 9], [0, 9, 7, 7, 8, 8], conf)
    r.loc[3, "sr_conf_2x"] = 0.5                         # the attack pushes 3 below tau
    s = softmax_response(r, 0.9)                         # selected 0, 1, 3, 5; robustly 0, 1, 5
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 1, 5])
    m = compose_rule(r, C, s)
    assert m["nat_acc"] == pytest.approx(4 / 6)          # R answers 0, 1, 3, 5: wrong at 1, 5
    assert m["rob_acc"] == pytest.approx(3 / 6)          # 0 (R); 2, 3 (core); 5: R robust-wrong
    assert m["rob_acc_conservative"] == pytest.approx(2 / 6)  # 0; 2 (R and core both racc)


def test_compose_adaptive_lowers_an_over_counting_rule():
    s = eri(R)
    # the rule counts 0, 2, 3, 5; the adaptive attack fools H at 2 (selector flips to R inside
    # B_eps), and H(5) is wrong at the clean point already. Points 1, 4 are not attacked.
    adv = pd.DataFrame({"index": [0, 2, 3, 5], "h_adv_wrong": [False, True, False, False]})
    m = compose_adaptive(R, C, s, adv)
    assert m["rob_acc"] == pytest.approx(4 / 6)
    assert m["rob_acc_adaptive"] == pytest.approx(2 / 6)
    assert m["gap"] == pytest.approx(2 / 6) and m["n_overcounted"] == 2
    assert ADAPTIVE_COLUMNS == ["index", "h_adv_wrong"]
    # strings from a CSV read back as bools too
    m2 = compose_adaptive(R, C, s, adv.assign(h_adv_wrong=["False", "True", "False", "False"]))
    assert m2["rob_acc_adaptive"] == pytest.approx(2 / 6)
    with pytest.raises(DataError, match="lack 1 points"):
        compose_adaptive(R, C, s, adv.iloc[:3])


def test_cascade_by_hand():
    s1, s2 = eri(R), eri(R2)
    m = cascade([R, R2], C, [s1, s2])
    assert m["nat_acc"] == pytest.approx(4 / 6)   # 0,1,2,5 -> R (1, 5 wrong); 3,4 -> R2
    assert m["rob_acc"] == pytest.approx(5 / 6)   # 0 R; 3,4 R2; 2,5 core; 1 R wrong
    assert m["rob_acc_conservative"] == pytest.approx(1 / 6)  # only 0
    assert m["routed"] == pytest.approx([4 / 6, 2 / 6, 0.0])
    assert m["robustly_routed"] == pytest.approx([2 / 6, 2 / 6])
    rev = cascade([R2, R], C, [s2, s1])
    assert rev["nat_acc"] == pytest.approx(1.0)
    assert rev["rob_acc"] == pytest.approx(1.0)
    assert rev["rob_acc_conservative"] == pytest.approx(4 / 6)  # 2, 5 need R2 and R racc
    pts = cascade_points([R, R2], C, [s1, s2])
    np.testing.assert_array_equal(pts["stage"], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(pts["robust_stage"], [0, 0, 2, 1, 1, 2])
    # a cascade of one model is the composition (12)
    one = cascade([R], C, [s1])
    comp = compose_rule(R, C, s1)
    for k in ("nat_acc", "rob_acc", "rob_acc_conservative"):
        assert one[k] == comp[k]
    with pytest.raises(ParamError):
        cascade([R, R2], C, [s1])


def test_best_cascade_does_not_claim_a_spurious_win():
    cands = [Candidate("R+ERI", R, eri(R)), Candidate("R2+ERI", R2, eri(R2))]
    best = best_composition(cands, C, max_nat_drop=0.0)
    assert best["name"] == "R2+ERI" and best["feasible"]
    assert best["metrics"]["rob_acc"] == pytest.approx(1.0)
    res = best_cascade(cands, C, max_nat_drop=0.0)
    assert res["best_single"]["name"] == "R2+ERI"
    assert not res["beats_single"] and res["gain"] == pytest.approx(0.0)


def test_best_cascade_beats_single_when_models_cover_different_points():
    label = list(range(6))
    nonrob = [(y + 1) % 10 for y in label]
    core = records(label, label, nonrob, nonrob)                  # accurate, never robust
    ra = records(label, label, label[:2] + nonrob[2:], label[:2] + nonrob[2:])  # robust on 0, 1
    rb = records(label, label, nonrob[:2] + label[2:4] + nonrob[4:],
                 nonrob[:2] + label[2:4] + nonrob[4:])            # robust on 2, 3
    cands = [Candidate("A", ra, eri(ra)), Candidate("B", rb, eri(rb))]
    single = best_composition(cands, core)
    assert single["metrics"]["rob_acc"] == pytest.approx(2 / 6)
    res = best_cascade(cands, core)
    assert sorted(res["chain"]) == ["A", "B"]
    assert res["metrics"]["rob_acc"] == pytest.approx(4 / 6)
    assert res["metrics"]["nat_acc"] == pytest.approx(1.0)
    assert res["beats_single"] and res["gain"] == pytest.approx(2 / 6)
    assert sorted(res["front"]) == ["A", "B"]
    with pytest.raises(ParamError):
        best_cascade(cands, core, rule="optimistic")


def test_compose_certified_by_hand():
    """4 points, eps = 0.1. G certifies: p0 radius 0.3 correct (robustly selected, sound rule),
    p1 radius 0.15 correct (selected, not robustly under the sound rule), p2 abstains, p3 radius 0.5 wrong.
    Core: correct and robust on p1, p2; correct non-robust on p0; wrong on p3."""
    import pandas as pd
    from robust_abstain.compose import compose_certified
    from robust_abstain.selectors import cri
    cert = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 1, 2, 0], "pred": [0, 1, 2, 1],
                         "conf": [.9] * 4, "smooth_pred": [0, 1, -1, 1], "cert_pred": [0, 1, -1, 1],
                         "cert_radius": [0.3, 0.15, 0.0, 0.5]})
    core = pd.DataFrame({"index": [0, 1, 2, 3, 4], "label": [0, 1, 2, 0, 0], "pred": [0, 1, 2, 2, 0],
                         "conf": [.9] * 5, "eps": [.1] * 5, "adv_pred_1x": [1, 1, 2, 2, 0],
                         "adv_pred_2x": [1, 1, 2, 2, 0], "sr_pred_1x": [0] * 5, "sr_conf_1x": [.9] * 5,
                         "sr_pred_2x": [0] * 5, "sr_conf_2x": [.9] * 5})
    sound = compose_certified(cert, core, cri(cert, 0.1, "sound"))
    # selected (radius >= 0.1): p0, p1, p3 -> G answers 0 ok, 1 ok, 1 wrong; p2 -> core ok: nat 3/4
    assert sound["nat_acc"] == 0.75
    # robustly selected (>= 0.2): p0 (ok), p3 (wrong); else core robust-acc: p1 yes, p2 yes -> 3/4
    assert sound["rob_acc"] == 0.75 and sound["rob_acc_certified"] == 0.25
    assert sound["core_rob_acc"] == 0.5 and sound["d_rob_acc"] == 0.25
    paper = compose_certified(cert, core, cri(cert, 0.1, "paper"))
    # paper rule: robustly selected = radius >= 0.1: p0 ok, p1 ok, p3 wrong; p2 core ok -> 3/4
    assert paper["rob_acc"] == 0.75 and paper["rob_acc_certified"] == 0.5
