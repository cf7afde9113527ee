"""The end-to-end adaptive attack on H (12), for S_ERI and S_SR, on constructed 1-D cases.

Effectively 1-D (x_0 only), eps = 0.1, label 0 everywhere, core = always 0 (robust and accurate).
F_robust predicts 0 iff x_0 > 0.62, with logit slope 10 (so its confidence grows away from 0.62).
* x_0 = 0.50: F_robust says 1 (wrong), robust on B_eps = [0.4, 0.6] but not on B_2eps: not robustly
  selected, so the paper's rule credits the core -- yet S_ERI(x) = 1 and H(x) = 1 != y.
* x_0 = 0.90: F_robust correct and robust on B_2eps: robustly selected, really robust-accurate.
* x_0 = 0.75: F_robust correct, robust on B_eps only: core branch; S(x') = 1 anywhere in B_eps(x)
  would force F_robust(x') = F_robust(x) = y, so H cannot be fooled through S_ERI.
"""
import numpy as np
import pytest
import torch
from torch import nn

from robust_abstain.adaptive import AttackConfig, _candidates, adaptive_records, attack_targets, deployed_h
from robust_abstain.compose import compose_adaptive, compose_rule
from robust_abstain.errors import ParamError
from robust_abstain.evaluate import empirical_records
from robust_abstain.selectors import SelectorSpec, eri, softmax_response


class Threshold(nn.Module):
    def __init__(self, t: float):
        super().__init__()
        self.t = t
        self.w = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        z = self.w * (x[:, 0] - self.t)
        return torch.stack([z, torch.zeros_like(z)], 1)   # class 0 iff x_0 > t


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([5.0, 0.0]))

    def forward(self, x):
        return self.b.expand(len(x), 2) + 0 * x[:, :1]


CFG = AttackConfig(eps=0.1, steps=20, push_steps=10)


def _records(model, x, y):
    return empirical_records(model, x, y, torch.arange(len(y)), eps=0.1, steps=20, progress=False)


def test_eri_composition_rule_over_counts_and_the_attack_finds_it():
    x = torch.tensor([[0.50, 0.5], [0.90, 0.5], [0.75, 0.5]])
    y = torch.zeros(3, dtype=torch.long)
    robust_model, core = Threshold(0.62), Constant()
    rdf, cdf = _records(robust_model, x, y), _records(core, x, y)
    assert rdf["adv_pred_1x"].tolist() == [1, 0, 0] and rdf["adv_pred_2x"].tolist() == [0, 0, 1]
    assert attack_targets(rdf, cdf, eri(rdf)).tolist() == [True, True, True]   # the rule counts all

    rule = compose_rule(rdf, cdf, eri(rdf))
    assert rule["rob_acc_rule"] == 1.0
    assert rule["rob_acc"] == pytest.approx(2 / 3)      # sound: x_0 = 0.5 has H(x) = 1 != y

    adv = adaptive_records(robust_model, core, rdf, cdf, [SelectorSpec("ERI")], x, y, CFG)
    assert adv["selector"].tolist() == ["ERI"] * 3
    assert adv["h_adv_wrong"].tolist() == [True, False, False]
    assert adv["h_adv_pred"].tolist() == [1, -1, -1]
    both = compose_adaptive(rdf, cdf, eri(rdf), adv)
    assert both["rob_acc_adaptive"] == pytest.approx(2 / 3) and both["gap"] == pytest.approx(1 / 3)
    assert both["rob_acc"] == pytest.approx(2 / 3) and both["n_overcounted"] == 1


def test_softmax_response_composition_is_fooled_through_the_robust_branch():
    """x_0 = 0.64: F_robust right but unsure (p = sigmoid(0.2) = 0.55 < tau = 0.6), so S_SR(x) = 0
    and the robust core answers: the rule counts x. Yet at x' = (0.54, .) in B_eps(x) F_robust says 1
    with p = sigmoid(0.8) = 0.69 >= tau: S_SR(x') = 1 and H(x') = 1 != y. The attack must find it;
    the old adaptive stage attacked only S_ERI compositions."""
    x = torch.tensor([[0.64, 0.5], [0.95, 0.5]])
    y = torch.zeros(2, dtype=torch.long)
    robust_model, core = Threshold(0.62), Constant()
    rdf, cdf = _records(robust_model, x, y), _records(core, x, y)
    spec = SelectorSpec("SR", 0.6)
    sel = softmax_response(rdf, 0.6)
    assert sel.selected.tolist() == [False, True]
    assert compose_rule(rdf, cdf, sel)["rob_acc_rule"] == 1.0
    adv = adaptive_records(robust_model, core, rdf, cdf, [spec], x, y, CFG)
    assert adv["selector"].tolist() == ["SR@0.60"] * 2
    assert adv["h_adv_wrong"].tolist() == [True, False]
    assert compose_adaptive(rdf, cdf, sel, adv)["rob_acc"] == 0.5


def test_deployed_h_follows_equation_12():
    """H(x') = F_robust(x') where S(x') = 1 else F_core(x'): S_SR by its confidence, S_ERI by its own
    attack in B_eps(x')."""
    robust_model, core = Threshold(0.62), Constant()
    x = torch.tensor([[0.30, 0.5], [0.58, 0.5], [0.64, 0.5], [0.95, 0.5]])
    y = torch.zeros(4, dtype=torch.long)
    # F_robust: 1 (p .96), 1 (p .60), 0 (p .55), 0 (p .96); core: 0 everywhere
    sr = deployed_h(robust_model, core, SelectorSpec("SR", 0.7), x, y, CFG)
    assert sr.tolist() == [1, 0, 0, 0]
    er = deployed_h(robust_model, core, SelectorSpec("ERI"), x, y, CFG)
    assert er.tolist() == [1, 0, 0, 0]      # 0.30: robust on [0.2, 0.4] -> selected, wrong


def test_candidates_stay_in_the_ball_and_in_the_unit_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, generator=g)
    y = torch.zeros(16, dtype=torch.long)
    for spec in (SelectorSpec("ERI"), SelectorSpec("SR", 0.8)):
        for c in _candidates(Threshold(0.5), Constant(), spec, x, y, CFG):
            assert (c - x).abs().max() <= 0.1 + 1e-6
            assert c.min() >= 0 and c.max() <= 1


def test_selector_spec_validation():
    with pytest.raises(ParamError):
        SelectorSpec("MAX")
    with pytest.raises(ParamError):
        SelectorSpec("SR")
    assert SelectorSpec("SR", 0.25).name == "SR@0.25" and SelectorSpec("ERI").name == "ERI"


def test_no_targets_no_attack():
    x = torch.rand(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    from robust_abstain.adaptive import attack_composition
    fooled, h = attack_composition(Threshold(0.5), Constant(), SelectorSpec("ERI"), x, y,
                                   np.zeros(4, dtype=bool), CFG)
    assert not fooled.any() and (h == -1).all()
