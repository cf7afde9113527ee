"""Hand-computed checks of each loss, named after the paper's equations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.special import log_ndtr
from scipy.stats import norm
from torch import nn

from robust_abstain.errors import ParamError
from robust_abstain.losses import (LOSSES, LossConfig, an_pgd, noisy_copies, cra_loss, era_term, kl_div,
                                   macer_radius, mart_loss, mma_loss, most_likely_other, soft_inaccuracy,
                                   trades_terms)
from robust_abstain.models.nets import build_model


class Const(nn.Module):
    """Returns fixed logits whatever the input (plus a zero-gradient dependence on x)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


class Recorder(nn.Module):
    """Wraps a model; records (a detached copy of) every input it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def _mlp():
    torch.manual_seed(0)
    return build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])


def _param_grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)


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


def _trades_by_hand(model, x, x_adv, y, gamma):
    """(5) written out: CE(f(x), y) + gamma * mean_i sum_c p_c(x) (log p_c(x) - log p_c(x'))."""
    logits = model(x)
    p, logp = F.softmax(logits, 1), F.log_softmax(logits, 1)
    kl = (p * (logp - F.log_softmax(model(x_adv), 1))).sum(1).mean()
    return F.cross_entropy(logits, y) + gamma * kl


def test_trades_terms_with_given_x_adv_runs_two_forwards_and_matches_eq5():
    """A given x' needs f(x) and f(x') only: no eval-mode forward of x whose result is unused."""
    model = Recorder(_mlp())
    x, y = torch.rand(8, 2), torch.randint(0, 3, (8,))
    x_adv = (x + 0.1 * torch.rand(8, 2)).clamp(0, 1)
    cfg = LossConfig("trades", eps=0.1, pgd_steps=3)
    loss, logits_nat, x_out, st = trades_terms(model, x, y, cfg, gamma=6.0, x_adv=x_adv)
    assert len(model.inputs) == 2
    assert torch.equal(model.inputs[0], x) and torch.equal(model.inputs[1], x_adv) and x_out is x_adv
    ref = _trades_by_hand(model.model, x, x_adv, y, 6.0)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=0)
    for a, b in zip(_param_grads(model, loss), _param_grads(model.model, ref)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_trades_terms_attack_path_matches_eq5_at_its_own_x_adv():
    """Without x': one eval forward for the KL target, the PGD steps, then f(x) and f(x')."""
    model = Recorder(_mlp())
    x, y = torch.rand(8, 2), torch.randint(0, 3, (8,))
    cfg = LossConfig("trades", eps=0.1, pgd_steps=3)
    loss, _, x_adv, _ = trades_terms(model, x, y, cfg, gamma=6.0, generator=torch.Generator().manual_seed(0))
    assert len(model.inputs) == 1 + cfg.pgd_steps + 2
    assert torch.equal(model.inputs[-1], x_adv)
    assert torch.allclose(loss, _trades_by_hand(model.model, x, x_adv, y, 6.0), rtol=1e-6, atol=0)


def test_macer_radius_matches_formula():
    sigma = 0.5
    # one draw, inv_temp 1, p = (0.8, 0.15, 0.05): CR = sigma / 2 * (PhiInv(0.8) - PhiInv(0.15))
    logits = torch.log(torch.tensor([[[0.8, 0.15, 0.05]]]))
    cr = macer_radius(logits, sigma, inv_temp=1.0)
    assert cr.item() == pytest.approx(sigma / 2 * (norm.ppf(0.8) - norm.ppf(0.15)), rel=1e-4)


def test_macer_radius_matches_eq9_over_draws_at_inverse_temperature():
    """k = 3 draws, G = 4, moderate probabilities: sigma/2 * (PhiInv(p_top) - PhiInv(p_second)) with
    p = mean_j softmax(G * logits_j), computed in float64 with scipy."""
    logits = torch.tensor([[[0.3, 0.1, -0.2], [0.5, 0.4, 0.0], [0.0, 0.2, 0.1]],
                           [[-0.1, 0.0, 0.35], [0.2, -0.3, 0.1], [0.0, 0.1, 0.3]]])
    z = 4 * logits.double().numpy()
    p = (np.exp(z) / np.exp(z).sum(2, keepdims=True)).mean(1)
    top2 = -np.sort(-p, axis=1)[:, :2]
    ref = 0.25 / 2 * (norm.ppf(top2[:, 0]) - norm.ppf(top2[:, 1]))
    assert np.allclose(macer_radius(logits, 0.25, 4.0).numpy(), ref, rtol=1e-5, atol=1e-7)


def _two_class_radius(m, sigma, inv_temp):
    """(9) for logits (m, 0), one draw: p_second = sigmoid(-G m), CR = -sigma * PhiInv(p_second),
    dCR/dm = sigma * G * (1 - p_second) * p_second / phi(PhiInv(p_second)); in log space (scipy)."""
    log_q = -np.logaddexp(0.0, inv_temp * m)
    z = brentq(lambda t: log_ndtr(t) - log_q, -100.0, 0.0, xtol=1e-14, rtol=1e-14)
    slope = math.exp(log_q + z * z / 2 + 0.5 * math.log(2 * math.pi))  # q / phi(z)
    return -sigma * z, sigma * inv_temp * (1 - math.exp(log_q)) * slope


@pytest.mark.parametrize("margin", [1.0, 3.5, 6.0, 10.0, 30.0, 200.0])
def test_macer_radius_keeps_value_and_gradient_for_confident_points(margin):
    """(9) for a confidently wrong point: the radius and its gradient stay exact (no clamp), so
    CRA's term (7) can lower the robust-inaccurate radius. A clamp of p at 1e-6 zeroed the
    gradient from G * margin ~ 14 on (margin 3.5 at G = 4)."""
    sigma, G = 0.25, 4.0
    m = torch.tensor(margin, requires_grad=True)
    logits = torch.stack([m, torch.zeros(())])[None, None, :]  # [B=1, k=1, C=2]
    cr = macer_radius(logits, sigma, G)
    (grad,) = torch.autograd.grad(cr.sum(), m)
    ref, ref_grad = _two_class_radius(margin, sigma, G)
    assert torch.isfinite(cr).all() and torch.isfinite(grad)
    assert grad.item() > 0 and grad.item() == pytest.approx(ref_grad, rel=1e-4)
    assert cr.item() == pytest.approx(ref, rel=1e-5)


def test_macer_radius_gradient_reaches_the_logits_of_a_confident_multiclass_point():
    """Margin 6 at G = 4 with 3 classes and 4 draws: the top two classes' logits get finite,
    non-zero gradients, and descending them lowers the top class's logit and raises the runner-up's."""
    jitter = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    logits = torch.tensor([[6.0, 0.0, -1.0]]).repeat(4, 1)[None] + 0.1 * jitter
    logits.requires_grad_(True)
    cr = macer_radius(logits, 0.25, 4.0)
    (grad,) = torch.autograd.grad(cr.sum(), logits)
    assert torch.isfinite(cr).all() and torch.isfinite(grad).all()
    assert (grad[0, :, 0] > 1e-3).all() and (grad[0, :, 1] < -1e-3).all()


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


def test_mart_weight_is_not_detached():
    """MART: mean BCE(f(x'), y) + beta * mean KL(f(x) || f(x')) * (1 - f(x)_y), with the gradient
    flowing through the weight 1 - f(x)_y (as in MART's reference code), written out by hand at
    the x' the loss used."""
    model = Recorder(_mlp()).double()  # float64: the hand formula's rounding stays far below the effect
    with torch.no_grad():  # sharper logits than at initialisation, so that the KL term matters
        for prm in model.parameters():
            prm.mul_(3)
    x, y = torch.rand(16, 2, dtype=torch.float64), torch.randint(0, 3, (16,))
    cfg = LossConfig("mart", beta=6.0, eps=0.3, pgd_steps=3)
    loss, _ = mart_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    x_nat, x_adv = model.inputs[-2], model.inputs[-1]
    assert torch.equal(x_nat, x)
    f = model.model
    logp_nat, logp_adv = F.log_softmax(f(x), 1), F.log_softmax(f(x_adv), 1)
    p_nat, p_adv = logp_nat.exp(), logp_adv.exp()
    other = p_adv.scatter(1, y[:, None], 0).max(1).values
    bce = -logp_adv.gather(1, y[:, None]).squeeze(1) - torch.log(1.0001 - other)
    kl = (p_nat * (logp_nat - logp_adv)).sum(1)
    weight = 1 - p_nat.gather(1, y[:, None]).squeeze(1)
    ref = bce.mean() + 6.0 * (kl * weight).mean()
    detached = bce.mean() + 6.0 * (kl * weight.detach()).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    got, want, wrong = (torch.cat([g.flatten() for g in _param_grads(m, v)])
                        for m, v in ((model, loss), (f, ref), (f, detached)))
    assert (got - want).norm() < 1e-10 * want.norm()
    assert (wrong - want).norm() > 0.05 * want.norm()  # the test can tell the two apart


def test_noisy_draws_from_the_generator_in_the_documented_layout():
    x = torch.rand(3, 2)
    out = noisy_copies(x, 4, 0.5, torch.Generator().manual_seed(3))
    eta = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, x.repeat_interleave(4, 0) + 0.5 * eta)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noisy_accepts_a_cpu_generator_for_cuda_inputs():
    x = torch.rand(3, 2)
    a = noisy_copies(x.cuda(), 4, 0.5, torch.Generator().manual_seed(3))
    b = noisy_copies(x, 4, 0.5, torch.Generator().manual_seed(3))
    assert a.device.type == "cuda" and torch.allclose(a.cpu(), b)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_and_differentiable(name):
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])
    x, y = torch.rand(8, 2), torch.randint(0, 3, (8,))
    cfg = LossConfig(name, beta=0.5, eps=0.05, pgd_steps=2, k=4, d_max=0.1)
    loss, stats = LOSSES[name].fn(model, x, y, cfg, torch.Generator().manual_seed(0))
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
        a = LOSSES[name].fn(model, x, y, cfg, torch.Generator().manual_seed(1))[0]
        b = LOSSES[name].fn(model, x, y, cfg, torch.Generator().manual_seed(1))[0]
        assert a.item() == b.item()


def test_era_shared_variant_runs_and_differs():
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.3, 0.3])
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    a = LOSSES["era"].fn(model, x, y, LossConfig("era", eps=0.1, pgd_steps=3), torch.Generator().manual_seed(0))[0]
    b = LOSSES["era"].fn(model, x, y, LossConfig("era", eps=0.1, pgd_steps=3, era_variant="shared"),
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
        LossConfig.from_params(params, "loss")


# ----------------------------------------------------------------------------- MMA (Ding et al. 2020)
W_LIN = torch.tensor([1.0, -2.0, 0.5, 1.5])  # ||w||_1 = 5


class TwoClassLinear(nn.Module):
    """Logits (w.x - 0.5, 0): the Linf distance of x to the decision boundary is |w.x - 0.5| / ||w||_1,
    reached at x -+ t sign(w), as long as the box [0, 1] allows it."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(-0.5))

    def forward(self, x):
        s = x @ W_LIN + self.bias
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _linear_points(scores):
    """x = 0.5 + s w / ||w||_2^2, whose score w.x - 0.5 is s (margin |s| / 5); for |s| <= 1.5 it lies
    in [0.1, 0.9]^4, and the way to the boundary, -+ sign(w), leads each coordinate towards 0.5, so
    the box does not bind."""
    return 0.5 + torch.tensor(scores)[:, None] * W_LIN / W_LIN.square().sum()


def test_an_pgd_margin_of_a_linear_model_is_its_linf_distance():
    """AN-PGD's estimate lies within [m, m + d_max / 2^n] of the exact Linf margin m < d_max, its
    point is misclassified and lies at -+ margin * sign(w); a margin beyond d_max reads d_max."""
    margins = [0.02, 0.05, 0.11, 0.19, 0.3, 0.07]
    labels = [0, 0, 1, 0, 0, 1]
    x = _linear_points([m * 5 * (1 if c == 0 else -1) for m, c in zip(margins, labels)])
    model, y = TwoClassLinear(), torch.tensor(labels)
    cfg = LossConfig("mma", eps=0.05, d_max=0.2, pgd_steps=5, mma_search_steps=10)
    x_star, est = an_pgd(model, x, y, cfg, torch.Generator().manual_seed(0))
    exact = torch.tensor(margins)
    inside = exact < 0.2
    assert torch.all(est[inside] >= exact[inside] - 1e-6)
    assert torch.all(est[inside] <= exact[inside] + 0.2 / 2 ** 10 + 1e-6)
    assert est[~inside].tolist() == [pytest.approx(0.2)]
    assert torch.all(model(x_star).argmax(1)[inside] != y[inside])
    towards = torch.where(y == 0, -1.0, 1.0)[:, None] * W_LIN.sign()  # the direction to the boundary
    assert torch.allclose(x_star - x, est[:, None] * towards, atol=1e-6)


def test_an_pgd_points_are_misclassified_within_their_margin_on_an_mlp():
    """Guarantees of an_pgd on a nonlinear model: x_star in [0, 1], ||x_star - x||_inf <= margin <= d_max,
    and F(x_star) != y wherever margin < d_max; the model's mode is restored."""
    torch.manual_seed(3)
    model = build_model("mlp", (2,), 3, [0.5, 0.5], [0.05, 0.05])  # std 0.05: boundaries inside [0, 1]^2
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = LossConfig("mma", eps=0.05, d_max=0.3, pgd_steps=5)
    x_star, margin = an_pgd(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert model.training and x_star.min() >= 0 and x_star.max() <= 1
    assert torch.all((x_star - x).abs().amax(1) <= margin + 1e-6) and torch.all(margin <= 0.3)
    found = margin < 0.3
    assert found.any() and torch.all(model(x_star[found]).argmax(1) != y[found])


def test_mma_gives_only_clean_ce_to_hinged_and_misclassified_points():
    """A constant model predicts class 0 whatever the input: the correct points (y = 0) are never
    fooled within d_max (margin d_max, hinged), so L = mean CE + beta * sum_{F(x) != y} CE / B."""
    logits = [1.0, 0.0, -1.0]
    model, x, y = Const(logits), torch.rand(5, 2), torch.tensor([0, 0, 1, 2, 0])
    cfg = LossConfig("mma", beta=2.0, eps=0.05, d_max=0.2, pgd_steps=3)
    loss, st = mma_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    lse = math.log(sum(math.exp(v) for v in logits))
    ce = [lse - logits[c] for c in y.tolist()]
    assert loss.item() == pytest.approx(sum(ce) / 5 + 2.0 * (ce[2] + ce[3]) / 5, rel=1e-6)
    assert st["margin"] == pytest.approx(0.2 * 3 / 5, rel=1e-6)  # misclassified points count 0


def test_mma_loss_is_ce_plus_beta_times_log2_at_the_boundary_on_a_linear_model():
    """Two classes, linear: at x + delta* the score is within 5 * d_max / 2^n of 0, so each pushed
    point's CE is log 2 (to 5e-4); L = mean CE(x) + beta * (n_pushed log 2 + sum_wrong CE(x)) / B."""
    scores = [0.1, 0.4, -0.3, 1.5, 0.5, -0.6]  # margins 0.02, 0.08, 0.06, 0.3 (hinged), 0.1, 0.12
    labels = [0, 0, 1, 0, 1, 0]                # the last two misclassified
    x = _linear_points(scores)
    model, y = TwoClassLinear(), torch.tensor(labels)
    cfg = LossConfig("mma", beta=3.0, eps=0.05, d_max=0.2, pgd_steps=5, mma_search_steps=10)
    loss, st = mma_loss(model, x, y, cfg, torch.Generator().manual_seed(0))
    ce = [math.log1p(math.exp(-s if c == 0 else s)) for s, c in zip(scores, labels)]
    ref = sum(ce) / 6 + 3.0 * (3 * math.log(2) + ce[4] + ce[5]) / 6
    assert loss.item() == pytest.approx(ref, abs=3.0 * 3 * 5e-4 / 6 + 1e-6)
    assert st["margin"] == pytest.approx((0.02 + 0.08 + 0.06 + 0.2) / 6, abs=1e-3)


@pytest.mark.parametrize("params,msg", [
    ({"name": "mma", "eps": 0.05}, "d_max"),
    ({"name": "mma", "eps": 0.05, "d_max": 0}, "d_max"),
    ({"name": "mma", "eps": 0.1, "d_max": 0.05}, "d_max"),
    ({"name": "mma", "eps": 0.05, "d_max": 0.1, "mma_search_steps": 0}, "mma_search_steps"),
    ({"name": "mma", "eps": 0.05, "d_max": 0.1, "pgd_steps": 0}, "pgd_steps"),
    ({"name": "mma", "d_max": 0.1}, "eps"),
    ({"name": "mma", "eps": 0.05, "d_max": 0.1, "step_size": 0.01}, "step_size"),
])
def test_bad_mma_params(params, msg):
    with pytest.raises(ParamError, match=msg):
        LossConfig.from_params(params, "loss")


def test_mma_params_accept_d_max_at_or_above_eps():
    for d_max in (0.05, 0.1):
        cfg = LossConfig.from_params({"name": "mma", "beta": 2.0, "eps": 0.05, "d_max": d_max}, "loss")
        assert cfg.d_max == d_max
