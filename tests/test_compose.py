"""Compositions (12): the sound score (headline) vs the paper's rule, adaptive evidence, cascades.

sound(x) = H(x) = y and every model up to the first robustly selecting one (the core if none)
robust-accurate at eps; paper(x) = the model at the first robustly selecting stage robust-accurate
at eps. The paper's rule credits x through the core when S(x) = 1, F_robust(x) != y and x is not
robustly selected, although H(x) = F_robust(x) != y (issue 9, item 4)."""

import numpy as np
import pandas as pd
import pytest

import torch

from robust_abstain.analysis.choose import Candidate, best_cascade, best_composition
from robust_abstain.analysis.compose import (RULES, cascade, compose, compose_certified, compose_points,
                                             composition)
from robust_abstain.analysis.records import ADAPTIVE_COLUMNS
from robust_abstain.analysis.selectors import cri, eri, softmax_response
from robust_abstain.errors import DataError, ParamError


def records(label, pred, adv1, adv2, conf=None, adv_conf=np.nan) -> pd.DataFrame:
    """Empirical records; APGD-conf never changes F(x) and reaches ``conf``; APGD-CE reaches
    ``adv_conf`` (default NaN: not recorded)."""
    n = len(label)
    conf = np.full(n, 0.9) if conf is None else np.asarray(conf, float)
    return pd.DataFrame({"index": np.arange(n), "label": label, "pred": pred, "conf": conf,
                         "eps": 0.1, "adv_pred_1x": adv1, "adv_conf_1x": adv_conf,
                         "adv_pred_2x": adv2, "adv_conf_2x": adv_conf,
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


def test_equation_12_on_arrays_and_tensors():
    """H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x), point by point, on numpy and torch."""
    s = np.array([True, False, True, False])
    np.testing.assert_array_equal(compose(s, np.array([3, 3, 7, 7]), np.array([5, 6, 5, 6])), [3, 6, 7, 6])
    h = compose(torch.tensor(s), torch.tensor([3, 3, 7, 7]), torch.tensor([5, 6, 5, 6]))
    assert isinstance(h, torch.Tensor) and h.tolist() == [3, 6, 7, 6]
    np.testing.assert_array_equal(compose(s, 0, 1), [0, 1, 0, 1])     # scalars broadcast


def test_composition_natural_accuracy_sound_score_and_paper_rule_by_hand():
    s = eri(R)
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 1, 2, 5])
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0, 1])
    m = composition(R, C, s)
    assert m.nat_acc == pytest.approx(4 / 6)            # wrong at 1 and 5 (answered by R)
    # sound: 0 (robustly selected, R racc); 2 (H(2) = y, R and core both racc). 3: R not robust;
    # 5: H(5) = R(5) != y
    assert m.rob_acc == pytest.approx(2 / 6) and m.rob_acc_sound == m.rob_acc
    assert m.rob_acc_rule == pytest.approx(4 / 6)       # 0 (R), 2, 3, 5 (core) by the rule
    assert not hasattr(m, "rob_acc_conservative") and RULES == ("sound", "paper")
    assert m.selected == pytest.approx(4 / 6) and m.rob_sel == pytest.approx(2 / 6)
    assert m.core_nat_acc == pytest.approx(1.0) and m.core_rob_acc == pytest.approx(4 / 6)
    assert m.d_nat_acc == pytest.approx(-2 / 6) and m.d_rob_acc == pytest.approx(-2 / 6)
    assert m.n == 6 and m.fooled is None and np.isnan(m.rob_acc_adaptive) and m.n_fooled == 0
    pts = compose_points(R, C, s)
    np.testing.assert_array_equal(pts["h_pred"], [0, 9, 2, 3, 4, 9])
    np.testing.assert_array_equal(pts["h_correct"], [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(pts["rob_acc_sound"], [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(pts["rob_acc_paper"], [1, 0, 1, 1, 0, 1])


def test_sound_score_refuses_a_selected_wrong_point_the_paper_rule_credits_through_the_core():
    """Item 4, one point: S_ERI(x) = 1 (R robust at eps), R(x) = 9 != y = 0, not robustly selected
    (R moves at 2 eps), core robust-accurate. H(x) = 9: x itself, in B_eps(x), is misclassified."""
    r = records([0], [9], [9], [8])
    c = records([0], [0], [0], [0])
    s = eri(r)
    assert s.selected[0] and not s.robustly_selected[0]
    m = composition(r, c, s)
    assert m.nat_acc == 0.0
    assert m.rob_acc == 0.0                  # sound: H(x) != y
    assert m.rob_acc_rule == 1.0             # the rule: not robustly selected -> core, racc
    assert m.rob_acc <= m.nat_acc < m.rob_acc_rule


def test_best_composition_ranks_by_the_sound_score_by_default():
    """Item 4: A's rule score is inflated by two selected wrong points (0, 1) the rule credits via
    the core; by the sound score B is better. Core: accurate, robust at 0 and 1 only.
    A: rule 3/3 (0, 1 core; 2 A), sound 1/3 (2).  B: rule = sound = 2/3 (0, 1; 2 needs the core)."""
    c = records([0, 1, 2], [0, 1, 2], [0, 1, 7], [0, 1, 7])
    a = records([0, 1, 2], [9, 9, 2], [9, 9, 2], [8, 8, 2])
    b = records([0, 1, 2], [0, 1, 2], [0, 1, 7], [0, 1, 7])
    cands = [Candidate("A", a, eri(a)), Candidate("B", b, eri(b))]
    sound = best_composition(cands, c, max_nat_drop=None)
    assert sound.name == "B" and sound.candidate is cands[1]
    assert sound.outcome.rob_acc == pytest.approx(2 / 3)
    paper = best_composition(cands, c, max_nat_drop=None, rule="paper")
    assert paper.name == "A" and paper.outcome.rob_acc_rule == pytest.approx(1.0)
    assert paper.outcome.rob_acc == pytest.approx(1 / 3)


RATES = ("n", "nat_acc", "rob_acc", "rob_acc_sound", "rob_acc_rule", "selected", "rob_sel", "core_nat_acc",
         "core_rob_acc", "d_nat_acc", "d_rob_acc", "gap", "n_overcounted", "routed", "robustly_routed")


def test_composition_aligns_by_index():
    s = eri(R)
    shuffled = C.sample(frac=1.0, random_state=1)
    a, b = composition(R, shuffled, s), composition(R, C, s)
    assert [getattr(a, k) for k in RATES] == [getattr(b, k) for k in RATES]
    for k in ("index", "h_pred", "h_correct", "sound", "rule", "core_correct", "core_robust"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    with pytest.raises(DataError):
        composition(R, C.iloc[:5], s)


def test_composition_with_softmax_response():
    conf = [0.95, 0.99, 0.5, 0.97, 0.6, 0.96]
    r = records(LABEL, [0, 9, 2, 3, 9, 9], [0, 9, 2, 7, 8, 9], [0, 9, 7, 7, 8, 8], conf)
    r.loc[1, "sr_conf_2x"] = 0.5                        # APGD-conf pushes 1 below tau at 2 eps
    s = softmax_response(r, 0.9)                        # selected 0, 1, 3, 5
    # robustly: robust at 2 eps (0, 1) and worst confidence >= 0.9 (0: 0.95; 1: 0.5) -> 0 only
    np.testing.assert_array_equal(np.flatnonzero(s.selected), [0, 1, 3, 5])
    np.testing.assert_array_equal(np.flatnonzero(s.robustly_selected), [0])
    m = composition(r, C, s)
    assert m.nat_acc == pytest.approx(4 / 6)          # R answers 0, 1, 3, 5: wrong at 1, 5
    # rule: 0 (R); 1, 2, 3, 5 through the core (core racc at 1, 2, 3, 5), 4 not -> 5/6
    assert m.rob_acc_rule == pytest.approx(5 / 6)
    # sound: 0; 2 (core answers, R and core racc). 1, 5: H wrong; 3: R not robust; 4: core not
    assert m.rob_acc == pytest.approx(2 / 6)


def test_composition_with_adaptive_evidence_headlines_the_lowest_of_sound_and_attack():
    s = eri(R)
    # the rule counts 0, 2, 3, 5; the adaptive attack fools H at 2 (selector flips to R inside
    # B_eps), and H(5) is wrong at the clean point already. Points 1, 4 are not attacked.
    adv = pd.DataFrame({"index": [0, 2, 3, 5], "h_adv_wrong": [False, True, False, False]})
    m = composition(R, C, s, adv)
    assert m.rob_acc_rule == pytest.approx(4 / 6)
    assert m.rob_acc_sound == pytest.approx(2 / 6)      # 0, 2
    assert m.rob_acc_adaptive == pytest.approx(2 / 6)   # rule & H(x) = y & not fooled: 0, 3
    assert m.rob_acc == pytest.approx(1 / 6)            # sound & not fooled: 0
    assert m.gap == pytest.approx(3 / 6) and m.n_overcounted == 3   # 2, 3, 5
    assert m.d_rob_acc == pytest.approx(1 / 6 - 4 / 6) and m.n_fooled == 1
    assert ADAPTIVE_COLUMNS == ["index", "h_adv_wrong"]
    # strings from a CSV read back as bools too
    m2 = composition(R, C, s, adv.assign(h_adv_wrong=["False", "True", "False", "False"]))
    assert m2.rob_acc == pytest.approx(1 / 6)
    with pytest.raises(DataError, match="lack 1 points"):
        composition(R, C, s, adv.iloc[:3])


def test_composition_outcome_per_point_by_hand():
    s = eri(R)
    adv = pd.DataFrame({"index": [0, 2, 3, 5], "h_adv_wrong": [False, True, False, False]})
    o = composition(R, C, s, adv)
    np.testing.assert_array_equal(o.index, np.arange(6))
    np.testing.assert_array_equal(o.h_correct, [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(o.rule, [1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(o.sound, [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(o.fooled, [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(o.headline, [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(o.adaptive, [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(o.core_correct, [1] * 6)
    np.testing.assert_array_equal(o.core_robust, [0, 1, 1, 1, 0, 1])
    for rate, mask in (("rob_acc", o.headline), ("rob_acc_sound", o.sound), ("rob_acc_rule", o.rule),
                       ("rob_acc_adaptive", o.adaptive)):
        assert mask.mean() == pytest.approx(getattr(o, rate)), rate
    # without adaptive evidence nobody is fooled: headline = sound, adaptive = rule & H(x) = y
    o0 = composition(R, C, s)
    assert o0.fooled is None
    np.testing.assert_array_equal(o0.headline, [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(o0.adaptive, [1, 0, 1, 1, 0, 0])


def test_cascade_by_hand():
    s1, s2 = eri(R), eri(R2)
    m = cascade([R, R2], C, [s1, s2])
    assert m.nat_acc == pytest.approx(4 / 6)   # 0,1,2,5 -> R (1, 5 wrong); 3,4 -> R2
    # sound: only 0. 2 needs R2 racc (R2 not robust at 2); 3, 4 need R racc; 1, 5: H wrong
    assert m.rob_acc == pytest.approx(1 / 6)
    assert m.rob_acc_rule == pytest.approx(5 / 6)   # 0 R; 3,4 R2; 2,5 core; 1 R wrong
    assert m.routed == pytest.approx([4 / 6, 2 / 6, 0.0])
    assert m.robustly_routed == pytest.approx([2 / 6, 2 / 6])
    rev = cascade([R2, R], C, [s2, s1])
    assert rev.nat_acc == pytest.approx(1.0)
    assert rev.rob_acc_rule == pytest.approx(1.0)
    assert rev.rob_acc == pytest.approx(4 / 6)  # 2, 5 need R2 and R racc
    np.testing.assert_array_equal(m.stage, [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(m.robust_stage, [0, 0, 2, 1, 1, 2])
    np.testing.assert_array_equal(m.h_pred, [0, 9, 2, 3, 4, 9])
    np.testing.assert_array_equal(m.sound, [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(m.rule, [1, 0, 1, 1, 1, 1])
    # a cascade of one model is the composition (12)
    one = cascade([R], C, [s1])
    comp = composition(R, C, s1)
    assert [getattr(one, k) for k in RATES] == [getattr(comp, k) for k in RATES]
    with pytest.raises(ParamError):
        cascade([R, R2], C, [s1])


def test_cascade_sound_score_refuses_a_point_answered_wrong_by_an_earlier_stage():
    """Item 4 for cascades: F_1 selects x (robust at eps) and answers 9 != y; F_2 robustly selects x
    and is robust-accurate. The rule credits F_2; H(x) = F_1(x) != y."""
    m1 = records([0], [9], [9], [8])
    m2 = records([0], [0], [0], [0])
    core = records([0], [0], [5], [5])
    m = cascade([m1, m2], core, [eri(m1), eri(m2)])
    assert m.stage.tolist() == [0] and m.robust_stage.tolist() == [1]
    assert m.nat_acc == 0.0 and m.rob_acc == 0.0 and m.rob_acc_rule == 1.0


def test_best_cascade_does_not_claim_a_spurious_win():
    cands = [Candidate("R+ERI", R, eri(R)), Candidate("R2+ERI", R2, eri(R2))]
    best = best_composition(cands, C, max_nat_drop=0.0)
    assert best.name == "R2+ERI" and best.feasible   # R+ERI loses 2/6 natural accuracy
    # R2 robustly selects 0, 1, 3, 4 (racc); 5: R2 and core racc; 2: R2 not robust -> 5/6
    assert best.outcome.rob_acc == pytest.approx(5 / 6)
    assert best.outcome.rob_acc_rule == pytest.approx(1.0)
    res = best_cascade(cands, C, max_nat_drop=0.0)
    assert res.best_single.name == "R2+ERI" and res.best_single.feasible and res.rule == "sound"
    assert not res.beats_single and res.gain == pytest.approx(0.0)


def test_best_cascade_gains_by_the_paper_rule_where_the_sound_score_refuses():
    """A robust (at 2 eps) on 0, 1, B on 2, 3; each non-robust elsewhere; the core accurate, never
    robust. The paper's rule credits A -> B with 0..3 (4/6); the sound score needs A racc at 2, 3
    too (S_A may flip to 1 inside B_eps(x)), so no cascade beats the single 2/6."""
    label = list(range(6))
    nonrob = [(y + 1) % 10 for y in label]
    core = records(label, label, nonrob, nonrob)                  # accurate, never robust
    ra = records(label, label, label[:2] + nonrob[2:], label[:2] + nonrob[2:])  # robust on 0, 1
    rb = records(label, label, nonrob[:2] + label[2:4] + nonrob[4:],
                 nonrob[:2] + label[2:4] + nonrob[4:])            # robust on 2, 3
    cands = [Candidate("A", ra, eri(ra)), Candidate("B", rb, eri(rb))]
    single = best_composition(cands, core)
    assert single.outcome.rob_acc == pytest.approx(2 / 6)
    paper = best_cascade(cands, core, rule="paper")
    assert sorted(paper.chain) == ["A", "B"]
    assert paper.outcome.rob_acc_rule == pytest.approx(4 / 6)
    assert paper.outcome.rob_acc == pytest.approx(2 / 6)
    assert paper.beats_single and paper.gain == pytest.approx(2 / 6)
    sound = best_cascade(cands, core)
    assert sound.chain == ["A"] and not sound.beats_single
    assert sound.outcome.rob_acc == pytest.approx(2 / 6)
    assert sorted(sound.front) == ["A", "B"]
    with pytest.raises(ParamError):
        best_cascade(cands, core, rule="conservative")


def test_best_cascade_beats_single_when_the_first_model_is_robust_where_the_second_selects():
    """A robust at 2 eps on 0, 1 and at eps (not 2 eps) on 2, 3; B robust at 2 eps on 2, 3. A -> B:
    0, 1 by A; 2, 3 robustly selected by B with A racc there too -> 4/6 sound; each alone 2/6."""
    label = list(range(6))
    nonrob = [(y + 1) % 10 for y in label]
    core = records(label, label, nonrob, nonrob)                  # accurate, never robust
    ra = records(label, label, label[:4] + nonrob[4:], label[:2] + nonrob[2:])
    rb = records(label, label, nonrob[:2] + label[2:4] + nonrob[4:],
                 nonrob[:2] + label[2:4] + nonrob[4:])
    cands = [Candidate("A", ra, eri(ra)), Candidate("B", rb, eri(rb))]
    single = best_composition(cands, core)
    assert single.name == "A" and single.outcome.rob_acc == pytest.approx(2 / 6)
    res = best_cascade(cands, core)
    assert res.chain == ["A", "B"]
    assert res.outcome.rob_acc == pytest.approx(4 / 6)
    assert res.outcome.nat_acc == pytest.approx(1.0)
    assert res.beats_single and res.gain == pytest.approx(2 / 6)
    assert cascade([rb, ra], core, [eri(rb), eri(ra)]).rob_acc == pytest.approx(2 / 6)


def _core_l2(label, pred, adv) -> pd.DataFrame:
    """Core records under L2 APGD; APGD-conf not run (sr_pred -1, NaN confidences)."""
    n = len(label)
    return pd.DataFrame({"index": np.arange(n), "label": label, "pred": pred, "conf": 0.9,
                         "eps": 0.1, "adv_pred_1x": adv, "adv_conf_1x": np.nan, "adv_pred_2x": adv,
                         "adv_conf_2x": np.nan, "sr_pred_1x": -1, "sr_conf_1x": np.nan,
                         "sr_pred_2x": -1, "sr_conf_2x": np.nan})


def test_compose_certified_by_hand():
    """4 points, eps = 0.1. G certifies: p0 radius 0.3 correct (>= 2 eps), p1 radius 0.15 correct
    (in [eps, 2 eps)), p2 abstains, p3 radius 0.5 wrong. Core: correct and robust on p1, p2;
    correct non-robust on p0; wrong on p3 (p4: an extra core point, ignored)."""
    cert = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 1, 2, 0], "pred": [0, 1, 2, 1],
                         "conf": [.9] * 4, "smooth_pred": [0, 1, -1, 1], "cert_pred": [0, 1, -1, 1],
                         "cert_radius": [0.3, 0.15, 0.0, 0.5]})
    core = _core_l2([0, 1, 2, 0, 0], [0, 1, 2, 2, 0], [1, 1, 2, 2, 0])
    sound = compose_certified(cert, core, cri(cert, 0.1, "sound"))
    # selected (radius >= 0.1): p0, p1, p3 -> G answers 0 ok, 1 ok, 1 wrong; p2 -> core ok: nat 3/4
    assert sound.nat_acc == 0.75
    # sound: p0 (radius >= 0.2, correct); p1 (G correct at eps and core racc). p2: G abstains, no
    # certificate on the ball; p3: H wrong -> 2/4
    assert sound.rob_acc == 0.5 and sound.rob_acc_certified == 0.25
    # rule (the paper counts radius >= eps as robustly selected): p0 ok, p1 ok, p3 wrong; p2 core
    # racc -> 3/4
    assert sound.rob_acc_rule == 0.75
    assert sound.core_rob_acc == 0.5 and sound.d_rob_acc == 0.0
    assert sound.selected == 0.75 and sound.rob_sel == 0.5 and sound.n == 4    # p4 is not certified
    np.testing.assert_array_equal(sound.h_pred, [0, 1, 2, 1])            # H answers with G on p0, p1, p3
    paper = compose_certified(cert, core, cri(cert, 0.1, "paper"))
    # paper selection: robustly selected = radius >= 0.1: p0 ok, p1 ok, p3 wrong; p2 core ok -> 3/4;
    # the sound score and the certified part use 2 eps whatever the selector's rule
    assert paper.rob_acc_rule == 0.75 and paper.rob_acc == 0.5
    assert paper.rob_acc_certified == 0.25


def test_compose_certified_sound_score_differs_from_the_rule_by_hand():
    """Item 4, certified (eps = 0.1, S_CRI sound rule: selected radius >= 0.1, robustly >= 0.2):
    q0  G certified WRONG at radius 0.15, core racc: selected -> H(x) wrong; rule (radius >= eps
        counts as robustly selected): G wrong -> 0; sound 0
    q1  G correct at 0.15, core accurate, not robust: rule 1 (G); sound 0 (S may deselect in B_eps)
    q2  G correct at 0.15, core racc: rule 1, sound 1 (either branch is right on B_eps(x))
    q3  G correct at 0.5 (>= 2 eps), core wrong: rule 1, sound 1, certified part
    q4  G abstains, core racc: rule 1; sound 0 (G has no certificate, S may select it inside B_eps)"""
    cert = pd.DataFrame({"index": range(5), "label": [0, 1, 2, 3, 4], "pred": [0, 1, 2, 3, 4],
                         "conf": .9, "smooth_pred": [9, 1, 2, 3, -1], "cert_pred": [9, 1, 2, 3, -1],
                         "cert_radius": [0.15, 0.15, 0.15, 0.5, 0.0]})
    core = _core_l2([0, 1, 2, 3, 4], [0, 1, 2, 7, 4], [0, 8, 2, 7, 4])
    m = compose_certified(cert, core, cri(cert, 0.1, "sound"))
    assert m.nat_acc == pytest.approx(4 / 5)           # q0 wrong (G answers 9)
    assert m.rob_acc == pytest.approx(2 / 5)           # q2, q3
    assert m.rob_acc_rule == pytest.approx(4 / 5)      # q1, q2, q3, q4
    assert m.rob_acc_certified == pytest.approx(1 / 5)  # q3
    assert m.core_rob_acc == pytest.approx(3 / 5) and m.d_rob_acc == pytest.approx(-1 / 5)
    p = compose_certified(cert, core, cri(cert, 0.1, "paper"))
    assert p.rob_acc_rule == pytest.approx(4 / 5)      # q1, q2, q3 (G correct), q4 (core)
    assert p.rob_acc == pytest.approx(2 / 5) and p.rob_acc_certified == pytest.approx(1 / 5)


def test_certified_paper_rule_counts_radius_eps_whatever_the_selector_passed():
    """The paper counts a certified radius >= eps as robust selection: one point, radius 0.15 in
    [eps, 2 eps), G right, core not robust. Rule 1 whatever the selection passed in (S_CRI[sound]
    robustly selects at 2 eps only); sound 0 (S may deselect x' in B_eps(x), the core is not
    robust); certified part 0 (radius < 2 eps)."""
    cert = pd.DataFrame({"index": [0], "label": [1], "pred": [1], "conf": [.9], "smooth_pred": [1],
                         "cert_pred": [1], "cert_radius": [0.15]})
    core = _core_l2([1], [1], [7])
    for rule in ("sound", "paper"):
        m = compose_certified(cert, core, cri(cert, 0.1, rule))
        assert (m.rob_acc_rule, m.rob_acc, m.rob_acc_certified) == (1.0, 0.0, 0.0)
