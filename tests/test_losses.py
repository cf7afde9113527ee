"""Hand-computed checks of each loss, named after the paper's equations."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from robust_abstain.errors import ParamError
from robust_abstain.losses import (LOSSES, LossConfig, cra_loss, era_term, kl_div, macer_radius,
                                   most_likely_other, soft_inaccuracy, trades_terms)
from robust_abstain.models.nets import build_model


class Const(nn.Module):
    """Returns fixed logits whatever the input (plus a zero-gradient dependence on x)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_most_likely_other_excludes_prediction():
    logits = torch.tensor([[3.0, 2.0, 5.0], [1.0, 4.0, 0.0]])
    assert most_likely_other(logits, torch.tensor([2, 1])).tolist() == [0, 0]
    assert most_likely_other(logits, torch.tensor([0, 0])).tolist() == [2, 1]


def test_soft_inaccuracy_is_one_minus_p_y():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    assert soft_inaccuracy(logits, torch.tensor([0])).item() == pytest.approx(0.3, abs=1e-6)
    assert soft_inaccuracy(logits, torch.tensor([2])).item() == pytest.approx(0.9, abs=1e-6)


def test_era_term_vanishes_when_p_y_is_one():
    model = Const([50.0, 0.0, 0.0])  # p_0 = 1 up to 1e-22
    x = torch.rand(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    q = soft_inaccuracy(model(x), y)
    term = era_term(model, x, model(x).argmax(1), q)
    assert torch.all(term.abs() < 1e-12)


def test_era_term_value_and_target():
    # p = (0.5, 0.3, 0.2): prediction 0, most likely other class 1; y = 2 (inaccurate).
    p = torch.tensor([0.5, 0.3, 0.2])
    model = Const(torch.log(p))
    x = torch.rand(1, 2)
    term = era_term(model, x, torch.tensor([0]), soft_inaccuracy(model(x), torch.tensor([2])))
    assert term.item() == pytest.approx((1 - 0.2) * -math.log(0.3), rel=1e-5)


def test_kl_sum_vs_mean_and_zero_on_itself():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.allclose(kl_div(a, b, "sum"), 5 * kl_div(a, b, "mean"))
    assert torch.allclose(kl_div(a, a, "sum"), torch.zeros(3), atol=1e-6)
    ref = F.kl_div(F.log_softmax(b, 1), F.softmax(a, 1), reduction="none").sum(1)
    assert torch.allclose(kl_div(a, b, "sum"), ref, atol=1e-5)


def test_trades_reduces_to_ce_for_a_constant_model():
    model = Const([1.0, 2.0])
    x, y = torch.rand(6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    cfg = LossConfig("trades", beta=6.0, eps=0.1, pgd_steps=3)
    loss, _, x_adv, st = trades_terms(model, x, y, cfg, gamma=6.0)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-6)
    assert st["kl"] == pytest.approx(0.0, abs=1e-7)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_macer_radius_matches_formula():
    sigma = 0.5
    # one draw, inv_temp 1, p = (0.8, 0.15, 0.05): CR = sigma / 2 * (PhiInv(0.8) - PhiInv(0.15))
    logits = torch.log(torch.tensor([[[0.8, 0.15, 0.05]]]))
    cr = macer_radius(logits, sigma, inv_temp=1.0)
    assert cr.item() == pytest.approx(sigma / 2 * (norm.ppf(0.8) - norm.ppf(0.15)), rel=1e-4)


def test_cra_radius_term_vanishes_for_confident_correct_model():
    model = Const([30.0, 0.0])
    x, y = torch.rand(5, 2), torch.zeros(5, dtype=torch.long)
    cfg = LossConfig("cra", beta=0.0, sigma=0.25, k=4)
    loss, st = cra_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert abs(loss.item()) < 1e-6  # qualifier 1 - p_y = 0 and beta = 0


def test_cra_penalises_robust_inaccuracy():
    """For a confidently wrong point the radius term is positive and its gradient lowers the radius."""
    model = Const([3.0, 0.0])
    x, y = torch.rand(2, 2), torch.ones(2, dtype=torch.long)  # predicted 0, label 1
    cfg = LossConfig("cra", beta=0.0, sigma=0.25, k=4, inv_temp=1.0)
    loss, st = cra_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert loss.item() > 0 and st["radius"] > 0
    loss.backward()
    assert model.logits.grad[0] > 0  # descending it lowers the wrong class's logit


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_and_differentiable(name):
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])
    x, y = torch.rand(8, 2), torch.randint(0, 3, (8,))
    cfg = LossConfig(name, beta=0.5, eps=0.05, pgd_steps=2, k=4)
    loss, stats = LOSSES[name](model, x, y, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.training  # losses restore the mode they found


def test_losses_are_reproducible_with_a_generator():
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])
    x, y = torch.rand(8, 2), torch.randint(0, 3, (8,))
    for name in ("era", "cra", "dga"):
        cfg = LossConfig(name, beta=0.5, eps=0.05, pgd_steps=3, k=4)
        a = LOSSES[name](model, x, y, cfg, torch.Generator().manual_seed(1))[0]
        b = LOSSES[name](model, x, y, cfg, torch.Generator().manual_seed(1))[0]
        assert a.item() == b.item()


def test_era_shared_variant_runs_and_differs():
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    a = LOSSES["era"](model, x, y, LossConfig("era", eps=0.1, pgd_steps=3), torch.Generator().manual_seed(0))[0]
    b = LOSSES["era"](model, x, y, LossConfig("era", eps=0.1, pgd_steps=3, era_variant="shared"),
                      torch.Generator().manual_seed(0))[0]
    assert torch.isfinite(b) and a.item() != b.item()


@pytest.mark.parametrize("params,msg", [
    ({"name": "era", "beta": -1, "eps": 0.1}, "beta"),
    ({"name": "era", "beta": "x", "eps": 0.1}, "beta"),
    ({"name": "nope"}, "name"),
    ({"name": "era", "eps": 0}, "eps"),
    ({"name": "trades", "eps": -0.1}, "eps"),
    ({"name": "cra", "sigma": 0}, "sigma"),
    ({"name": "era", "eps": 0.1, "bogus": 1}, "bogus"),
    ({"name": "era", "eps": float("nan")}, "eps"),
])
def test_bad_loss_params(params, msg):
    with pytest.raises(ParamError, match=msg):
        LossConfig.from_params(params)
