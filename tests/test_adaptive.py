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

from robust_abstain.evaluation.adaptive import (AttackConfig, _candidates, adaptive_records, attack_composition,
                                                attack_targets, deployed_h)
from robust_abstain.analysis.compose import composition
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.empirical import EvaluateConfig, empirical_records
from robust_abstain.analysis.selectors import SelectorSpec, eri, softmax_response


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

    rule = composition(rdf, cdf, eri(rdf))
    assert rule.rob_acc_rule == 1.0
    assert rule.rob_acc == pytest.approx(2 / 3)      # sound: x_0 = 0.5 has H(x) = 1 != y

    adv = adaptive_records(robust_model, core, rdf, cdf, [SelectorSpec("ERI")], x, y, CFG)
    assert adv["selector"].tolist() == ["ERI"] * 3
    assert adv["h_adv_wrong"].tolist() == [True, False, False]
    assert adv["h_adv_pred"].tolist() == [1, -1, -1]
    both = composition(rdf, cdf, eri(rdf), adv)
    assert both.rob_acc_adaptive == pytest.approx(2 / 3) and both.gap == pytest.approx(1 / 3)
    assert both.rob_acc == pytest.approx(2 / 3) and both.n_overcounted == 1


def test_softmax_response_composition_is_fooled_through_the_robust_branch():
    """x_0 = 0.64: F_robust right but unsure (p = sigmoid(0.2) = 0.55 < tau = 0.6), so S_SR(x) = 0
    and the robust core answers: the rule counts x. Yet at x' = (0.54, .) in B_eps(x) F_robust says 1
    with p = sigmoid(0.8) = 0.69 >= tau: S_SR(x') = 1 and H(x') = 1 != y. The attack must find it."""
    x = torch.tensor([[0.64, 0.5], [0.95, 0.5]])
    y = torch.zeros(2, dtype=torch.long)
    robust_model, core = Threshold(0.62), Constant()
    rdf, cdf = _records(robust_model, x, y), _records(core, x, y)
    spec = SelectorSpec("SR", 0.6)
    sel = softmax_response(rdf, 0.6)
    assert sel.selected.tolist() == [False, True]
    assert composition(rdf, cdf, sel).rob_acc_rule == 1.0
    adv = adaptive_records(robust_model, core, rdf, cdf, [spec], x, y, CFG)
    assert adv["selector"].tolist() == ["SR@0.60"] * 2
    assert adv["h_adv_wrong"].tolist() == [True, False]
    assert composition(rdf, cdf, sel, adv).rob_acc == 0.5


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
    fooled, h = attack_composition(Threshold(0.5), Constant(), SelectorSpec("ERI"), x, y,
                                   np.zeros(4, dtype=bool), CFG)
    assert not fooled.any() and (h == -1).all()


def test_attack_composition_restores_the_models_modes():
    robust_model, core = Threshold(0.62), Constant()
    robust_model.train()
    core.eval()
    x = torch.tensor([[0.50, 0.5]])
    attack_composition(robust_model, core, SelectorSpec("ERI"), x, torch.zeros(1, dtype=torch.long),
                       np.ones(1, dtype=bool), CFG)
    assert robust_model.training and not core.training


def test_empirical_records_run_each_attack_at_its_scales():
    x = torch.tensor([[0.50, 0.5], [0.90, 0.5], [0.75, 0.5]])
    y = torch.zeros(3, dtype=torch.long)
    default = _records(Threshold(0.62), x, y)
    assert (default["sr_pred_1x"] == -1).all() and default["sr_conf_1x"].isna().all()
    assert (default["sr_pred_2x"] >= 0).all()
    both = empirical_records(Threshold(0.62), x, y, torch.arange(3), eps=0.1, steps=20, progress=False,
                             sr_scales=(1, 2))
    assert (both["sr_pred_1x"] >= 0).all() and both.drop(columns=["sr_pred_1x", "sr_conf_1x"]).equals(
        default.drop(columns=["sr_pred_1x", "sr_conf_1x"]))
    near = _records(Threshold(0.62), torch.tensor([[0.65, 0.5], [0.90, 0.5]]), y[:2])
    assert near["adv_pred_1x"].tolist() == [1, 0]   # 0.65 is fooled at eps, so not attacked at 2 eps:
    assert near["adv_pred_2x"].tolist() == [1, 0] and near["adv_conf_2x"].isna().tolist() == [True, False]


def _profile(name: str) -> dict:
    import yaml
    from pathlib import Path
    return yaml.safe_load((Path(__file__).resolve().parents[1] / name).read_text())


@pytest.mark.parametrize("profile", ["params.yaml", "params-paper.yaml", "params-full.yaml"])
def test_evaluate_config_reads_every_profile(profile):
    p = _profile(profile)
    for sec in ("evaluate", "evaluate_l2"):
        cfg = EvaluateConfig.from_params(p[sec], sec)
        assert (cfg.eps, cfg.norm, cfg.steps, cfg.seed) == (p[sec]["eps"], p[sec]["norm"], p[sec]["steps"],
                                                            p[sec]["seed"])
        assert cfg.attacks == p[sec]["attacks"] and cfg.attacks[0] == "apgd-ce"
    attack = AttackConfig.from_evaluate(EvaluateConfig.from_params(p["evaluate"], "evaluate"))
    ev = p["evaluate"]
    assert attack == AttackConfig(eps=ev["eps"], norm=ev["norm"], steps=ev["steps"], restarts=ev["restarts"],
                                  push_steps=ev["adaptive_push_steps"], seed=ev["seed"],
                                  batch_size=ev["batch_size"], selector_conf=1 in ev["sr_scales"],
                                  attacks=tuple(ev["attacks"]), member_steps=ev.get("member_steps"),
                                  n_target_classes=ev.get("n_target_classes"),
                                  square_queries=ev.get("square_queries"))


def test_evaluate_config_rejects_typos_missing_keys_and_bad_values():
    ev = _profile("params.yaml")["evaluate"]
    with pytest.raises(ParamError, match=r"unknown keys \['step'\]"):
        EvaluateConfig.from_params(ev | {"step": 10}, "evaluate")
    with pytest.raises(ParamError, match=r"evaluate_l2 lacks \['eps'\]"):
        EvaluateConfig.from_params({k: v for k, v in ev.items() if k != "eps"}, "evaluate_l2")
    for key, bad in (("norm", "l1"), ("eps", -0.1), ("steps", 0), ("sr_scales", [3]), ("seed", -1),
                     ("n_val_points", 0), ("adaptive_push_steps", 1.5)):
        with pytest.raises(ParamError, match=f"evaluate.{key}"):
            EvaluateConfig.from_params(ev | {key: bad}, "evaluate")
    l2 = EvaluateConfig.from_params({k: v for k, v in ev.items() if k != "adaptive_push_steps"}, "evaluate")
    with pytest.raises(ParamError, match="adaptive_push_steps"):
        AttackConfig.from_evaluate(l2)


def test_the_micro_profiles_validate(tmp_path):
    """tests/micro.py shrinks the profiles for the end-to-end runs; their sections stay valid."""
    from micro import micro_params
    from robust_abstain.evaluation.certify import CertifyConfig
    for source in ("params.yaml", "params-full.yaml"):
        p = micro_params(tmp_path, source)
        for sec in ("evaluate", "evaluate_l2"):
            EvaluateConfig.from_params(p[sec], sec)
        assert AttackConfig.from_evaluate(EvaluateConfig.from_params(p["evaluate"], "evaluate")).push_steps == 2
        assert CertifyConfig.from_params(p["certify"], "certify").n == 40
