"""The adaptive attack on H on a constructed case where the paper's rule over-counts.

1-D in effect (x_0 only), eps = 0.1, label 0 everywhere, core = always 0 (robust and accurate).
F_robust predicts 0 iff x_0 > 0.62.
* x_0 = 0.50: F_robust says 1 (wrong), robust on B_eps = [0.4, 0.6] but not on B_2eps: not robustly
  selected, so the rule credits the core -- yet S(x) = 1 and H(x) = 1 != y, and H stays wrong
  wherever the attacker moves deeper into the wrong region.
* x_0 = 0.90: F_robust correct and robust on B_2eps: robustly selected, really robust-accurate.
* x_0 = 0.75: F_robust correct, robust on B_eps only: core branch; S(x') = 1 anywhere in B_eps(x)
  would force F_robust(x') = F_robust(x) = y, so H cannot be fooled through the selector.
"""
import pytest
import torch
from torch import nn

from robust_abstain.adaptive import adaptive_records, rule_core_branch
from robust_abstain.compose import compose_adaptive, compose_rule
from robust_abstain.evaluate import empirical_records
from robust_abstain.selectors import eri


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


def test_rule_over_counts_and_the_adaptive_attack_finds_it():
    x = torch.tensor([[0.50, 0.5], [0.90, 0.5], [0.75, 0.5]])
    y = torch.zeros(3, dtype=torch.long)
    idx = torch.arange(3)
    robust_model, core = Threshold(0.62), Constant()
    kw = dict(eps=0.1, steps=20, progress=False)
    rdf = empirical_records(robust_model, x, y, idx, **kw)
    cdf = empirical_records(core, x, y, idx, **kw)
    assert rdf["adv_pred_1x"].tolist() == [1, 0, 0] and rdf["adv_pred_2x"].tolist() == [0, 0, 1]
    assert rule_core_branch(rdf, cdf).tolist() == [True, False, True]

    rule = compose_rule(rdf, cdf, eri(rdf))
    assert rule["rob_acc"] == 1.0          # the paper's rule credits all three points

    adv = adaptive_records(robust_model, rdf, cdf, x, y, 0.1, steps=20)
    assert adv["h_adv_wrong"].tolist() == [True, False, False]
    both = compose_adaptive(rdf, cdf, eri(rdf), adv)
    assert both["rob_acc_adaptive"] == pytest.approx(2 / 3) and both["gap"] == pytest.approx(1 / 3)
