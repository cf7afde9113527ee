"""The evaluate stage's attack list (AutoAttack's attacks_to_run): each attack on the points every
earlier one left robust, the per-point worst case over all of them, on constructed models whose
answers are known; the pyautoattack members' guarantees (ball, [0, 1], the global RNG)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robust_abstain.analysis.records import attack_broke, attack_prefixes, robust, worst_confidence
from robust_abstain.attacks.autoattack import AttackBudget, attack_points
from robust_abstain.analysis.selectors import SelectorSpec
from robust_abstain.errors import DataError, ParamError
from robust_abstain.evaluation.adaptive import AttackConfig, attack_composition, eri_select
from robust_abstain.evaluation.empirical import EvaluateConfig, check_same_threat_model, empirical_records
from robust_abstain.report.claims import strength_claim
from robust_abstain.report.strength import strength_md, strength_rows

EPS = 0.1
BUDGET = AttackBudget(norm="linf", steps=10, member_steps=10, n_target_classes=2, square_queries=200, seed=0)


class Masked(nn.Module):
    """4 classes on 1 x 4 x 4 images. Its logits count the pixels at the corner 0.5 + eps of the ball
    of a point at 0.5, through comparisons, so every gradient is zero: gradient attacks are blind
    (APGD-CE stays at its random start, which has one coordinate at the ball's face and the others
    strictly inside, so at most 1 such pixel), while a search over the ball's corners that reads
    the scores (Square) climbs to 10 of 16, where class 1 wins."""

    def forward(self, x):
        count = (x.flatten(1) >= 0.5 + EPS - 1e-6).float().sum(1) + 0 * x.flatten(1).sum(1)
        return torch.stack([torch.full_like(count, 9.5), count, -torch.ones_like(count),
                            -torch.ones_like(count)], 1)


class Linear(nn.Module):
    """Class 1 iff the mean pixel > 0.5 (a smooth boundary every gradient attack finds)."""

    def forward(self, x):
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m, torch.full_like(m, -1.0), torch.full_like(m, -2.0)], 1) * 50.0


def _points(*means):
    return torch.tensor(means, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()


def test_square_breaks_what_apgd_ce_cannot_and_the_records_keep_the_worst_case():
    x = _points(0.5, 0.2)                 # 0.5: the corner +eps flips it; 0.2: robust in the whole ball
    y = torch.zeros(2, dtype=torch.long)
    alone = empirical_records(Masked(), x, y, torch.arange(2), EPS, attacks=["apgd-ce"], budget=BUDGET,
                              sr_scales=(), progress=False)
    both = empirical_records(Masked(), x, y, torch.arange(2), EPS, attacks=["apgd-ce", "square"],
                             budget=BUDGET, sr_scales=(), progress=False)
    assert robust(alone, 1).tolist() == [True, True]             # APGD-CE sees zero gradients
    assert both["adv_pred_1x"].tolist() == [0, 0] and both["square_pred_1x"].tolist() == [1, 0]
    assert robust(both, 1).tolist() == [False, True] and robust(both, 2).tolist() == [False, True]
    # at 2 eps Square attacks only the point robust at eps under the whole list; APGD-CE every point
    # it left robust at eps (its own verdict stays complete)
    assert both["square_pred_2x"].tolist() == [-1, 0] and both["adv_conf_2x"].isna().tolist() == [False, False]
    assert attack_prefixes(both, 1) == ["adv", "sr", "square"]
    assert np.isclose(worst_confidence(both, 1)[0], both["square_conf_1x"][0])


def test_a_later_attack_runs_only_on_the_points_earlier_ones_left_robust():
    x = _points(0.52, 0.2)                 # 0.52: APGD-CE flips the smooth model at eps
    y = torch.zeros(2, dtype=torch.long)
    df = empirical_records(Linear(), x, y, torch.arange(2), EPS, attacks=["apgd-ce", "apgd-t", "square"],
                           budget=BUDGET, sr_scales=(), progress=False)
    assert df["pred"].tolist() == [1, 0] and df["adv_pred_1x"].tolist() == [0, 0]
    assert df["apgdt_pred_1x"].tolist() == [-1, 0] and df["square_pred_1x"].tolist() == [-1, 0]
    assert robust(df, 1).tolist() == [False, True]
    assert attack_broke(df, "apgdt", 1).tolist() == [False, False]


def test_strength_rows_count_breaks_beyond_apgd_ce_at_each_radius():
    # point 0: APGD-T breaks it at eps; 1: at 2 eps; 2: nothing does; 3: APGD-CE at eps; 4: APGD-T at
    # eps, and APGD-CE at 2 eps (so at 2 eps it is not a break beyond APGD-CE)
    df = pd.DataFrame({"index": [0, 1, 2, 3, 4], "label": [0, 0, 0, 1, 0], "pred": [0, 0, 0, 0, 0],
                       "adv_pred_1x": [0, 0, 0, 1, 0], "adv_pred_2x": [0, 0, 0, 1, 1],
                       "apgdt_pred_1x": [2, 0, 0, -1, 2], "apgdt_pred_2x": [-1, 1, 0, -1, -1],
                       "square_pred_1x": [-1, 0, 0, -1, -1], "square_pred_2x": [-1, -1, 0, -1, -1]})
    r1, r2 = strength_rows("m", df, seed=0)
    assert r1.broken == {"apgd-t": 2, "square": 0} and r2.broken == {"apgd-t": 2, "square": 0}
    assert (r1.rob_acc_apgd.value, r1.rob_acc_list.value) == (0.8, 0.4)
    assert (r2.rob_acc_apgd.value, r2.rob_acc_list.value) == (0.6, 0.2) and np.isclose(r2.d_rob_acc.value, -0.4)
    # the breaks add up to the accurate points the list takes from APGD-CE (every point here is accurate
    # where APGD-CE leaves it robust)
    for r in (r1, r2):
        assert sum(r.broken.values()) == round(5 * (r.rob_acc_apgd.value - r.rob_acc_list.value))


@pytest.mark.parametrize("member", ["apgd-t", "fab-t", "square"])
def test_members_stay_in_the_ball_and_unit_box_and_leave_the_global_rng_alone(member):
    torch.manual_seed(3)
    x = torch.rand(6, 1, 2, 2)
    state = torch.random.get_rng_state()
    adv = attack_points(member, Linear(), x, Linear()(x).argmax(1), EPS, BUDGET)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    again = attack_points(member, Linear(), x, Linear()(x).argmax(1), EPS, BUDGET)
    assert torch.equal(adv, again)


def test_attack_list_params_are_checked():
    ev = {"norm": "linf", "eps": 0.1, "steps": 10, "restarts": 1, "n_points": 10, "batch_size": 10,
          "sr_scales": [], "seed": 0}
    with pytest.raises(ParamError, match=r"evaluate lacks \['attacks'\]"):
        EvaluateConfig.from_params(ev, "evaluate")
    ev["attacks"] = ["apgd-ce"]
    for bad, msg in ((["square"], "must start with 'apgd-ce'"), (["apgd-ce", "pgd"], "evaluate.attacks"),
                     (["apgd-ce", "apgd-ce"], "twice"), ([], "non-empty")):
        with pytest.raises(ParamError, match=msg):
            EvaluateConfig.from_params(ev | {"attacks": bad}, "evaluate")
    with pytest.raises(ParamError, match=r"lacks \['square_queries'\]"):
        EvaluateConfig.from_params(ev | {"attacks": ["apgd-ce", "square"]}, "evaluate")
    with pytest.raises(ParamError, match=r"lacks \['member_steps'\]"):
        EvaluateConfig.from_params(ev | {"attacks": ["apgd-ce", "fab-t"], "n_target_classes": 3}, "evaluate")
    with pytest.raises(ParamError, match=r"budget or \['norm'\], not both"):
        empirical_records(nn.Linear(4, 4), torch.rand(2, 4), torch.zeros(2, dtype=torch.long), torch.arange(2),
                          0.1, norm="l2", budget=AttackBudget(norm="linf", steps=2, restarts=1))
    # the strength section follows the records' own APGD-CE verdicts: same threat model and budget
    strong = ev | {"attacks": ["apgd-ce", "square"], "square_queries": 100}
    check_same_threat_model(EvaluateConfig.from_params(strong, "s"), EvaluateConfig.from_params(ev, "e"))
    with pytest.raises(ParamError, match=r"evaluate_strong.eps is 0.2 but evaluate.eps is 0.1"):
        check_same_threat_model(EvaluateConfig.from_params(strong | {"eps": 0.2}, "s"),
                                EvaluateConfig.from_params(ev, "e"))


class Always(nn.Module):
    """Class 2 everywhere (a core model wrong on every point of label 0)."""

    def forward(self, x):
        return torch.tensor([0.0, 0.0, 5.0, 0.0]).expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_the_eri_selector_and_the_adaptive_attack_on_h_run_the_same_list():
    x, y = _points(0.5, 0.2), torch.zeros(2, dtype=torch.long)
    alone = AttackConfig(eps=EPS, steps=10, push_steps=5, attacks=("apgd-ce",))
    both = AttackConfig(eps=EPS, steps=10, push_steps=5, attacks=("apgd-ce", "square"), square_queries=200)
    assert eri_select(Masked(), x, alone).tolist() == [True, True]
    assert eri_select(Masked(), x, both).tolist() == [False, True]
    targets = np.ones(2, dtype=bool)
    # H answers with the robust model (selected, right at x); only Square moves it to a wrong class
    fooled, _ = attack_composition(Masked(), Always(), SelectorSpec("ERI"), x, y, targets, alone)
    assert fooled.tolist() == [False, False]
    fooled, h_adv = attack_composition(Masked(), Always(), SelectorSpec("ERI"), x, y, targets, both)
    assert fooled.tolist() == [True, False] and h_adv[0] in (1, 2)


def test_strength_page_and_claim_name_each_attack_and_judge_on_the_interval():
    df = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 0, 0, 1], "pred": [0, 0, 0, 0],
                       "adv_pred_1x": [0, 0, 0, 1], "adv_pred_2x": [0, 0, 0, 1],
                       "apgdt_pred_1x": [2, 0, 0, -1], "apgdt_pred_2x": [-1, 1, 0, -1]})
    text, m = strength_md({"m": df}, {"m": {"points": {"apgd-ce": 8, "apgd-t": 4},
                                                "evaluations": {"apgd-ce": 80, "apgd-t": 80}}}, 0.1, 0)
    assert "| m     | ε = 0.1" in text and "apgd-t: 1; 2." in text and "|      10 |     20 |" in text
    with pytest.raises(DataError, match="strength cost of m"):
        strength_md({"m": df}, {"m": {"evaluations": {"apgd-ce": 40}}}, 0.1, 0)
    assert m["strength/m/broken_apgd-t_1x"] == 1 and m["strength/m/d_rob_acc_1x"] == -0.25
    (line,) = strength_claim(m)
    assert line.startswith("- m: Δ R_rob^acc (list − APGD-CE) at ε -25.0") and "**does not hold**" in line
