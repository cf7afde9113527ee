"""Tests of the training-free mixing baselines: models/mixing.py (linear mixing, MixedNUTS's
transform and its gradient views) and evaluation/mixing.py (MixedNUTS's parameter choice, the
records of a front). Tiny models only; a few seconds total."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_abstain.analysis.records import EMPIRICAL_COLUMNS, accurate, robust
from robust_abstain.attacks import APGD
from robust_abstain.errors import DataError, ParamError
from robust_abstain.evaluation.empirical import EvaluateConfig, PointSet
from robust_abstain.evaluation.mixing import (MixingConfig, _cutoff_and_objective, choice_logits,
                                              choose_nuts, eps_records, front, mixing_records)
from robust_abstain.models.mixing import LinearMix, NutsMix, layer_norm, nuts_transform
from robust_abstain.models.nets import build_model

TOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _constant(probs: list[float]) -> nn.Module:
    """A 'model' of 2-d inputs whose logits are log(probs) everywhere."""
    m = nn.Linear(2, len(probs))
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor(probs).log())
    return m


def _gelu(v: float) -> float:
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _mlps(d: int = 6, classes: int = 3) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    core = build_model("mlp", (d,), classes, mean=[0.5] * d, std=[0.25] * d, width=16)
    rob = build_model("mlp", (d,), classes, mean=[0.5] * d, std=[0.25] * d, width=8)
    return core.eval(), rob.eval()


def _evaluate_cfg(**kw) -> EvaluateConfig:
    p = dict(norm="linf", eps=0.1, attacks=["apgd-ce"], steps=5, restarts=1, n_points=20, batch_size=16, sr_scales=[],
             seed=0, n_val_points=20)
    return EvaluateConfig.from_params(p | kw, "evaluate")


def _mixing_params(**kw) -> dict:
    return dict(alphas=[0.5], betas=[0.9], s_grid=[0.5, 2.0], p_grid=[1.0, 2.0], c_grid=[-0.5, 0.0],
                n_choose=20, core_probs="onehot", attack_views=["nonlin", "raw"], seed=0) | kw


# ----------------------------------------------------------------------------- linear mixing
def test_linear_mix_by_hand():
    """2 models, 3 classes, alpha 0.4: 0.6 [.5, .25, .25] + 0.4 [.1, .2, .7] = [.34, .23, .43]."""
    mix = LinearMix(_constant([0.5, 0.25, 0.25]), _constant([0.1, 0.2, 0.7]), alpha=0.4)
    out = mix(torch.zeros(1, 2))
    assert torch.allclose(out.exp(), torch.tensor([[0.34, 0.23, 0.43]]), atol=TOL)
    assert out.argmax(1).item() == 2


def test_linear_mix_alpha_0_is_core_and_1_is_robust():
    core, rob = _mlps()
    x = torch.rand(7, 6)
    assert torch.equal(LinearMix(core, rob, 0)(x), F.log_softmax(core(x), 1))
    assert torch.equal(LinearMix(core, rob, 1)(x), F.log_softmax(rob(x), 1))
    for a in (0.0, 0.3, 1.0):
        assert torch.allclose(LinearMix(core, rob, a)(x).exp().sum(1), torch.ones(7), atol=TOL)


def test_linear_mix_rejects_alpha_outside_0_1():
    core, rob = _mlps()
    with pytest.raises(ParamError, match="alpha"):
        LinearMix(core, rob, 1.5)


# ----------------------------------------------------------------------------- MixedNUTS
def test_nuts_transform_by_hand():
    """z = [1, 2, 3]: LN = [-1, 0, 1] (mean 2, unbiased var 1); c = 0.5, p = 2, s = 3:
    M = 3 sign(u) u^2 with u = GELU([-0.5, 0.5, 1.5])."""
    z = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    assert torch.allclose(layer_norm(z), torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64), atol=1e-8)
    want = [3 * math.copysign(_gelu(v) ** 2, _gelu(v)) for v in (-0.5, 0.5, 1.5)]
    assert np.allclose(want, [-0.0713966, 0.3585903, 5.8782294], atol=1e-6)
    assert torch.allclose(nuts_transform(z, 3.0, 2.0, 0.5), torch.tensor([want], dtype=torch.float64), atol=1e-6)


def test_nuts_mix_by_hand_with_a_onehot_core():
    """exp(out) = (1 - alpha) onehot(argmax core) + alpha softmax(M(z_robust)), summing to 1."""
    core, rob = _constant([0.2, 0.5, 0.3]), _constant([1 / 6, 2 / 6, 3 / 6])
    mix = NutsMix(core, rob, alpha=0.25, s=3.0, p=2.0, c=0.5, core_probs="onehot", attack_view="exact")
    out = mix(torch.zeros(1, 2))
    m = nuts_transform(torch.tensor([[1 / 6, 2 / 6, 3 / 6]]).log(), 3.0, 2.0, 0.5)[0]
    want = 0.75 * torch.tensor([0.0, 1.0, 0.0]) + 0.25 * m.softmax(0)
    assert torch.allclose(out.exp()[0], want, atol=TOL)
    assert torch.allclose(out.exp().sum(1), torch.ones(1), atol=TOL)


def test_nuts_mix_gradient_views_keep_the_value_and_take_the_surrogates_gradient():
    """attack_view changes only the gradient: the value is the true mixture, bit for bit; "raw"'s
    gradient is that of log((1 - a) softmax(core) + a (0.9 softmax(rob) + 0.1 softmax(M(rob))))."""
    core, rob = _mlps()
    x = torch.rand(5, 6)
    kw = dict(alpha=0.7, s=2.0, p=1.5, c=-0.3, core_probs="onehot", grad_alpha=0.6)
    views = {v: NutsMix(core, rob, attack_view=v, **kw) for v in ("exact", "nonlin", "raw")}
    outs = {v: m(x) for v, m in views.items()}
    assert torch.equal(outs["exact"], outs["raw"]) and torch.equal(outs["exact"], outs["nonlin"])

    def grad(f):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg)[:, 0].sum(), xg)
        return g

    def surrogate(xg):
        zr = rob(xg)
        mapped = nuts_transform(zr, 2.0, 1.5, -0.3).softmax(1)
        return (0.4 * core(xg).softmax(1) + 0.6 * (0.9 * zr.softmax(1) + 0.1 * mapped)).log()

    assert torch.allclose(grad(views["raw"]), grad(surrogate), atol=1e-5)
    # the exact view of a one-hot core has no gradient through the core: it differs from "raw"
    assert not torch.allclose(grad(views["exact"]), grad(views["raw"]), atol=1e-5)


def test_attack_through_the_mixture_stays_in_the_ball_and_in_0_1():
    core, rob = _mlps()
    x = torch.rand(12, 6)
    for mix in (LinearMix(core, rob, 0.5), NutsMix(core, rob, 0.9, 2.0, 2.0, -0.5, attack_view="raw")):
        pred = mix(x).argmax(1)
        x_adv = APGD(mix, eps=0.1, steps=8, seed=0).perturb(x, pred)
        assert (x_adv - x).abs().max() <= 0.1 + TOL
        assert x_adv.min() >= 0 and x_adv.max() <= 1


# ----------------------------------------------------------------------------- the choice
def test_cutoff_is_the_1_minus_beta_quantile_and_objective_the_share_above_it():
    """beta 0.75: the 25th percentile of [.1, .2, .3, .4, .5] is .2; 2 of [.05, .25, .6] reach it."""
    cutoff, obj = _cutoff_and_objective(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0.05, 0.25, 0.6]), 0.75)
    assert cutoff == pytest.approx(0.2) and obj == pytest.approx(2 / 3)


def test_choose_nuts_picks_the_least_objective_then_alpha_from_the_cutoff():
    """A = [1, 0.5, 0] (attacked, right), W = [1, 0, 0] (clean, wrong), c in {0, -2}. c = 0: W's
    margin exceeds A's (objective 1). c = -2: W's runners-up tie with its top after GELU (margin 0),
    below A's small margin (objective 0): c = -2 wins although its cutoff is the lower one, and
    alpha = 1 / (1 + cutoff)."""
    A, W = torch.tensor([[1.0, 0.5, 0.0]] * 3), torch.tensor([[1.0, 0.0, 0.0]] * 2)
    ch = choose_nuts(A, W, 1.0, [1.0], [1.0], [0.0, -2.0])
    top2 = nuts_transform(A[:1].double(), 1.0, 1.0, -2.0).softmax(1).topk(2).values[0]
    cutoff = (top2[0] - top2[1]).item()
    assert ch.c == -2.0 and ch.objective == 0.0
    assert 0 < cutoff < 0.05 and ch.alpha == pytest.approx(1 / (1 + cutoff))
    assert (ch.n_attacked_right, ch.n_clean_wrong) == (3, 2)
    # grad_alpha: the same rule on the untransformed softmax
    raw = A[:1].double().softmax(1).topk(2).values[0]
    assert ch.grad_alpha == pytest.approx(1 / (1 + (raw[0] - raw[1]).item()))


def test_choose_nuts_ties_go_to_the_highest_cutoff_the_most_core_weight():
    """W separated from A for every s: all objectives 0; the largest s has the largest margins,
    so the highest cutoff and the lowest alpha (MixedNUTS: 1 - alpha should not be tiny)."""
    A, W = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.5, 0.0]])
    ch = choose_nuts(A, W, 1.0, [0.5, 5.0], [1.0], [0.0])
    assert (ch.s, ch.objective) == (5.0, 0.0)
    low = choose_nuts(A, W, 1.0, [0.5], [1.0], [0.0])
    assert low.objective == 0.0 and 0.5 < ch.alpha < low.alpha < 1


def test_choose_nuts_needs_robust_accurate_points():
    with pytest.raises(DataError, match="n_choose"):
        choose_nuts(torch.empty(0, 3), torch.zeros(2, 3), 0.9, [1.0], [1.0], [0.0])


# ----------------------------------------------------------------------------- config and records
def test_mixing_config_names_the_key():
    MixingConfig.from_params(_mixing_params(), "mixing")
    with pytest.raises(ParamError, match=r"mixing\.betas\[0\]"):
        MixingConfig.from_params(_mixing_params(betas=[0.0]), "mixing")
    with pytest.raises(ParamError, match=r"mixing\.attack_view"):
        MixingConfig.from_params(_mixing_params(attack_views=["sign"]), "mixing")
    with pytest.raises(ParamError, match=r"mixing\.attack_views"):
        MixingConfig.from_params(_mixing_params(attack_views=[]), "mixing")
    with pytest.raises(ParamError, match="lacks"):
        MixingConfig.from_params({k: v for k, v in _mixing_params().items() if k != "s_grid"}, "mixing")


def test_mixing_records_schema_and_front():
    core, rob = _mlps()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
    ecfg, cfg = _evaluate_cfg(), MixingConfig.from_params(_mixing_params(), "mixing")
    right, wrong = choice_logits(rob, x, y, ecfg, cfg.seed)
    assert len(right) > 0 and len(right) + len(wrong) <= len(x)
    choices = [choose_nuts(right, wrong, b, cfg.s_grid, cfg.p_grid, cfg.c_grid) for b in cfg.betas]
    points = front(core, rob, cfg, choices)
    assert [p.method for p in points] == ["linear", "nuts"]
    # one alpha, two transforms: the records could not tell the mixtures apart
    other = dataclasses.replace(choices[0], beta=choices[0].beta + 0.1, s=choices[0].s + 1)
    with pytest.raises(DataError, match="same alpha"):
        front(core, rob, cfg, [choices[0], other])
    (df,) = mixing_records(points, {"test": PointSet(x, y, torch.arange(20))}, ecfg).values()
    assert list(df.columns) == ["method", "alpha"] + EMPIRICAL_COLUMNS
    assert len(df) == 2 * 20
    for (method, _), d in df.groupby(["method", "alpha"], sort=False):
        assert (d["adv_pred_2x"] == -1).all() and d["sr_conf_2x"].isna().all()
        rob_ok = robust(d, 1)
        assert rob_ok.dtype == bool and ((d["adv_pred_1x"] == d["pred"]).to_numpy() == rob_ok).all()
    linear = df[df["method"] == "linear"]
    with torch.no_grad():
        assert (linear["pred"].to_numpy() == LinearMix(core, rob, 0.5)(x).argmax(1).numpy()).all()
    assert accurate(linear).shape == (20,)


def test_the_front_leaves_alpha_0_and_1_to_the_models_own_records():
    for bad in ([0.0, 0.5], [0.5, 1]):
        with pytest.raises(ParamError, match=r"mixing.alphas\[\d\] must be strictly between 0 and 1"):
            MixingConfig.from_params(_mixing_params(alphas=bad), "mixing")


class _Blind(nn.Module):
    """The model's value with a zero gradient: an attack through it moves only by its random start."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).detach() + 0 * x.flatten(1).sum(1, keepdim=True)


def test_eps_records_are_the_worst_case_over_the_views():
    """A blind view first, the real gradient second: the second breaks points the first left,
    and only points no view changed count as robust."""
    core, _ = _mlps()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    ecfg = _evaluate_cfg(eps=0.3, steps=10, n_points=40, n_val_points=40)
    blind = eps_records([_Blind(core)], x, y, torch.arange(40), ecfg)
    both = eps_records([_Blind(core), core], x, y, torch.arange(40), ecfg)
    assert (blind["pred"] == both["pred"]).all()
    r_blind, r_both = robust(blind, 1), robust(both, 1)
    assert not (r_both & ~r_blind).any() and r_both.sum() < r_blind.sum()
    assert (both["adv_conf_1x"] <= blind["adv_conf_1x"] + TOL).all()
