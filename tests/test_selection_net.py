"""The learned selection network S_NET (ACE baseline): its robust-selection rule on hand-made
records, the attack on its score, the adaptive attack on H with S_NET, and a micro training run.

Constructed 2-D cases (eps = 0.1, label 0 everywhere unless said): F_robust predicts 0 iff
x_0 > 0.62 (logit slope 10); the core always predicts 0 (robust and accurate); the selection
network is linear, s(x) = 10 (x_1 - 0.6), so S_NET(x) = 1 iff x_1 >= 0.6 at tau = 1/2.
"""
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from robust_abstain.analysis.choose import composed_specs
from robust_abstain.analysis.compose import composition
from robust_abstain.analysis.selectors import (SELECTORS, SelectorSpec, selection_net, selections,
                                               selector_grid)
from robust_abstain.data import save_prepared
from robust_abstain.errors import DataError, ParamError
from robust_abstain.evaluation.adaptive import (AttackConfig, DeployedSelector, _candidates, adaptive_records,
                                                attack_targets, deployed_h)
from robust_abstain.evaluation.empirical import empirical_records
from robust_abstain.evaluation.selection_net import (SelectionNetConfig, lowest_score, net_records,
                                                     selection_labels, train_selector)
from robust_abstain.models.checkpoint import ModelSpec, load_model, save_model, weights_digest
from robust_abstain.models.nets import build_model
from test_adaptive import Constant, Threshold   # the constructed models of the adaptive attack

CFG = SelectionNetConfig(n_train=64, label_steps=5, arch="mlp", width=8, steps=40, lr=0.01, batch_size=32,
                         seed=0, adv_steps=2, eval_steps=10, eval_restarts=1)
ATTACK = AttackConfig(eps=0.1, steps=20, push_steps=10)
ROOT = Path(__file__).resolve().parents[1]


def records(rows: list[tuple]) -> pd.DataFrame:
    """Empirical records from (label, pred, adv_pred_1x, adv_pred_2x, net_score, net_score_min)."""
    df = pd.DataFrame(rows, columns=["label", "pred", "adv_pred_1x", "adv_pred_2x", "net_score", "net_score_min"])
    df.insert(0, "index", np.arange(len(df)))
    df["conf"], df["eps"], df["adv_conf_1x"], df["adv_conf_2x"] = 0.9, 0.1, np.nan, np.nan
    df["sr_pred_1x"] = df["sr_pred_2x"] = -1
    df["sr_conf_1x"] = df["sr_conf_2x"] = np.nan
    return df


def core_records(rows: list[tuple]) -> pd.DataFrame:
    """Core records from (label, pred, adv_pred_1x)."""
    return records([(lab, p, a, a, 0.0, 0.0) for lab, p, a in rows]).drop(columns=["net_score", "net_score_min"])


def test_net_robust_selection_needs_its_own_decision_on_b_eps_and_the_robust_model_on_b_2eps():
    """tau = 0.7. 0: robustly selected. 1: selected, but an attack lowered the score below tau in
    B_eps. 2: the score holds on B_eps, but F_robust is not robust on B_2eps. 3: not selected.
    4: selected, F_robust robustly wrong, the score not robust. Core: accurate everywhere, robust
    at 3 and 4 only."""
    rob = records([(0, 0, 0, 0, 0.9, 0.8),
                   (0, 0, 0, 0, 0.9, 0.5),
                   (0, 0, 0, 1, 0.9, 0.8),
                   (0, 0, 0, 0, 0.3, 0.2),
                   (0, 1, 1, 1, 0.9, 0.5)])
    core = core_records([(0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0), (0, 0, 0)])
    s = selection_net(rob, 0.7)
    assert s.name == "NET@0.70" and s.params == {"tau": 0.7}
    assert s.selected.tolist() == [True, True, True, False, True]
    assert s.robustly_selected.tolist() == [True, False, False, False, False]
    o = composition(rob, core, s)
    assert o.h_correct.tolist() == [True, True, True, True, False]       # 4: H(x) = F_robust(x) = 1
    assert o.sound.tolist() == [True, False, False, True, False]
    # the paper's rule credits 4 (not robustly selected -> the core, robust-accurate): sound does not
    assert o.rule.tolist() == [True, False, False, True, True]
    assert (o.nat_acc, o.rob_acc, o.rob_acc_rule) == pytest.approx((0.8, 0.4, 0.6))
    with pytest.raises(ParamError):
        selection_net(rob, 1.5)
    with pytest.raises(DataError):
        selection_net(rob.assign(net_score_min=np.nan), 0.5)


def test_net_is_absent_for_ordinary_records_and_a_threshold_kind_with_them():
    rob = records([(0, 0, 0, 0, 0.9, 0.8), (0, 1, 1, 1, 0.4, 0.1)])
    plain = rob.drop(columns=["net_score", "net_score_min"])
    assert SELECTORS["NET"].threshold and not SELECTORS["NET"].certified
    assert all(s.kind != "NET" for s in selector_grid(plain, np.array([0.5])))
    core = core_records([(0, 0, 0), (0, 0, 0)])
    assert [s.kind for s in composed_specs(plain, core, [0.0, 0.5], 0.01)] == ["ERI"]
    grid = selector_grid(rob, np.array([0.2, 0.85]))
    assert [s.name for s in grid] == ["ERI", "NET@0.20", "NET@0.85"]
    for spec, sel in zip(grid, selections(grid, rob)):    # the sweep gives what each selector alone gives
        np.testing.assert_array_equal(sel.robustly_selected, spec.selection(rob).robustly_selected)
    assert [s.kind for s in composed_specs(rob, core, [0.0, 0.5], 0.01)] == ["ERI", "NET"]
    with pytest.raises(DataError):
        SelectorSpec("NET", 0.5).selection(plain)


class Linear(nn.Module):
    """s(x) = w . x + b (one logit), differentiable, with a known minimum over a box."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return (x.flatten(1) @ self.w + self.b)[:, None]


def test_score_attack_stays_in_the_ball_and_finds_the_linear_minimum():
    """For a linear s the lowest score on B_eps(x) and [0, 1] is at x - eps sign(w), clipped."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=g)
    net = Linear([2.0, -1.0, 0.5], 0.3).train()
    score, low, at = lowest_score(net, x, 0.1, steps=10, restarts=1, seed=0, batch_size=16)
    assert net.training                                      # its mode is restored
    assert (at - x).abs().max() <= 0.1 + 1e-6 and at.min() >= 0 and at.max() <= 1
    assert (low <= score).all()
    best = (x - 0.1 * torch.tensor([1.0, -1.0, 1.0])).clamp(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(low, torch.sigmoid(net(best)[:, 0]))
        torch.testing.assert_close(low, torch.sigmoid(net(at)[:, 0]))
        torch.testing.assert_close(score, torch.sigmoid(net(x)[:, 0]))
    s0, l0, a0 = lowest_score(net, x, 0.0, steps=10, restarts=1, seed=0)   # eps = 0: x itself
    assert torch.equal(s0, l0) and torch.equal(a0, x)


class Ledge(nn.Module):
    """s(x) = 1 - 10 relu(x_0 - 0.55): flat at x_0 = 0.5, falling beyond 0.55 (inside B_0.1)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))        # a parameter, for the device

    def forward(self, x):
        return (1 - 10 * torch.relu(x[:, :1] - 0.55)) + self.w


def test_apgd_random_starts_find_what_pgd_from_x_cannot():
    """PGD from x has no gradient on the ledge's flat part; APGD's random starts land beyond 0.55 and
    go down: the lowest score takes the worst case over both, inside the ball, seeded."""
    x = torch.full((200, 2), 0.5)
    s_pgd, l_pgd, _ = lowest_score(Ledge(), x, 0.1, steps=10, restarts=0, seed=0)
    assert torch.equal(l_pgd, s_pgd)                          # stuck at x
    score, low, at = lowest_score(Ledge(), x, 0.1, steps=10, restarts=1, seed=0)
    found = low < score
    assert 0.1 < found.float().mean() < 1 and (at - x).abs().max() <= 0.1 + 1e-6
    # the best the ball allows: x_0 = 0.6, s = 0.5
    torch.testing.assert_close(low[found], torch.full_like(low[found], torch.sigmoid(torch.tensor(0.5)).item()))
    again = lowest_score(Ledge(), x, 0.1, steps=10, restarts=1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((score, low, at), again))




def _net_case():
    robust_model, core, net = Threshold(0.62), Constant(), Linear([0.0, 10.0], -6.0)
    x = torch.tensor([[0.50, 0.70], [0.68, 0.55], [0.95, 0.95]])
    y = torch.zeros(3, dtype=torch.long)
    rec = lambda m: empirical_records(m, x, y, torch.arange(3), eps=0.1, steps=20, progress=False)  # noqa: E731
    return robust_model, core, net, x, y, net_records(rec(robust_model), net, x, 0.1, CFG), rec(core)


def test_adaptive_attack_on_h_with_the_selection_network():
    """0 (0.50, 0.70): S_NET(x) = 1 and F_robust(x) = 1: H(x) wrong, yet the rule credits the core
    (not robustly selected). 1 (0.68, 0.55): F_robust right, S_NET(x) = 0: the robust core answers
    and the rule counts x; but at x' = (0.58, 0.65) in B_eps(x), F_robust says 1 and S_NET selects:
    H(x') = 1 (found by candidate 4, which pushes F_robust wrong and S_NET up). 2 (0.95, 0.95):
    robustly selected, F_robust robust-accurate on B_2eps: not fooled."""
    robust_model, core, net, x, y, rdf, cdf = _net_case()
    assert rdf["net_score"].to_numpy() == pytest.approx(1 / (1 + np.exp(-np.array([1.0, -0.5, 3.5]))), abs=1e-6)
    spec = SelectorSpec("NET", 0.5)
    sel = spec.selection(rdf)
    assert sel.selected.tolist() == [True, False, True]
    assert sel.robustly_selected.tolist() == [False, False, True]
    assert attack_targets(rdf, cdf, sel).tolist() == [True, True, True]
    assert deployed_h(robust_model, core, spec, x, y, ATTACK, selector_net=net).tolist() == [1, 0, 0]
    cands = _candidates(robust_model, core, spec, x, y, ATTACK, selector_net=net)
    assert len(cands) == 6 and len(_candidates(robust_model, core, SelectorSpec("ERI"), x, y, ATTACK)) == 5
    for c in cands:
        assert (c - x).abs().max() <= 0.1 + 1e-6 and c.min() >= 0 and c.max() <= 1
    assert deployed_h(robust_model, core, spec, cands[5], y, ATTACK, selector_net=net)[1] == 1
    adv = adaptive_records(robust_model, core, rdf, cdf, [SelectorSpec("ERI"), spec], x, y, ATTACK,
                           selector_net=net)
    assert adv["selector"].tolist() == ["ERI"] * 3 + ["NET@0.50"] * 3
    assert adv["h_adv_wrong"].tolist()[3:] == [True, True, False]
    o = composition(rdf, cdf, sel, adv[adv.selector == "NET@0.50"])
    assert (o.rob_acc_rule, o.rob_acc_sound, o.rob_acc) == pytest.approx((1.0, 1 / 3, 1 / 3))
    with pytest.raises(ParamError):
        DeployedSelector(spec, robust_model, ATTACK)          # S_NET needs its network


def test_micro_training_is_seeded_learns_the_labels_and_round_trips(tmp_path):
    """64 points; labels from F_robust (x_0 > 0.62 is class 0, all labels 0): accurate and robust on
    B_2eps iff x_0 > 0.82. Same params -> same weights; the saved network scores the same."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 2, generator=g)
    t = selection_labels(Threshold(0.62), x, torch.zeros(64, dtype=torch.long), 0.1, CFG, progress=False)
    assert torch.equal(t, (x[:, 0] > 0.82).float())
    net, spec = train_selector(x, t, CFG, 0.1, mean=[0.5, 0.5], std=[0.3, 0.3], progress=False)
    again, _ = train_selector(x, t, CFG, 0.1, mean=[0.5, 0.5], std=[0.3, 0.3], progress=False)
    assert weights_digest(net) == weights_digest(again) and spec.num_classes == 1
    with torch.no_grad():
        acc = ((net(x)[:, 0] > 0).float() == t).float().mean()
    assert acc >= 0.8
    save_model(net, spec, tmp_path / "net.pt")
    loaded, _, _ = load_model(tmp_path / "net.pt")
    df = records([(0, 0, 0, 0, 0.0, 0.0)] * 64).drop(columns=["net_score", "net_score_min"])
    a, b = net_records(df, net, x, 0.1, CFG), net_records(df, loaded, x, 0.1, CFG)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == list(df.columns) + ["net_score", "net_score_min"]
    assert (a["net_score_min"] <= a["net_score"]).all()


def test_config_names_the_key():
    good = {k: getattr(CFG, k) for k in ("n_train", "label_steps", "arch", "width", "steps", "lr",
                                         "batch_size", "seed", "adv_steps", "eval_steps", "eval_restarts")}
    assert SelectionNetConfig.from_params(good, "selection_net") == CFG
    for key, bad in (("lr", 0), ("arch", "vit"), ("adv_steps", -1)):
        with pytest.raises(ParamError, match=f"selection_net.{key}"):
            SelectionNetConfig.from_params(good | {key: bad}, "selection_net")
    with pytest.raises(ParamError, match="n_train"):
        SelectionNetConfig.from_params({k: v for k, v in good.items() if k != "n_train"}, "selection_net")


def test_stage_micro_run(tiny_data, tmp_path, monkeypatch):
    """The stage on the 2-D tiny data: outputs exist, records gain the net columns only."""
    monkeypatch.chdir(tmp_path)
    save_prepared(tiny_data, "prepared.pt")
    paths = {}
    for name, seed in (("robust", 0), ("core", 1)):
        torch.manual_seed(seed)
        spec = ModelSpec("mlp", (2,), 2, (0.5, 0.5), (0.29, 0.29), 8)
        model = build_model(spec.arch, spec.input_shape, 2, spec.mean, spec.std, spec.width)
        save_model(model, spec, f"{name}.pt")
        for split, n in (("test", 40), ("val", 30)):
            ds = tiny_data.split(split)
            df = empirical_records(model, ds.tensors[0][:n], ds.tensors[1][:n], torch.arange(n), eps=0.05,
                                   steps=3, progress=False)
            df.to_csv(paths.setdefault((name, split), f"{name}-{split}.csv"), index=False)
    params = {"evaluate": {"norm": "linf", "eps": 0.05, "attacks": ["apgd-ce"], "steps": 3, "restarts": 1,
                           "n_points": 40, "n_val_points": 30, "batch_size": 500, "sr_scales": [2],
                           "adaptive_push_steps": 2, "seed": 0},
              "report": {"n_taus": 34, "max_nat_drop": 0.01, "warn_nat_drop": 0.03, "seed": 0},
              "selection_net": {"n_train": 64, "label_steps": 3, "arch": "mlp", "width": 8, "steps": 10,
                                "lr": 0.01, "batch_size": 32, "seed": 0, "adv_steps": 2, "eval_steps": 3,
                                "eval_restarts": 1, "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(sys, "argv", [
        "selection_net.py", "--model", "robust.pt", "--records", paths["robust", "test"],
        "--val-records", paths["robust", "val"], "--core-model", "core.pt",
        "--core-records", paths["core", "test"], "--core-val-records", paths["core", "val"],
        "--data", "prepared.pt", "--out-net", "net.pt", "--out", "test.csv", "--val-out", "val.csv",
        "--adaptive-out", "adaptive.csv"])
    runpy.run_path(str(ROOT / "stages" / "selection_net.py"), run_name="__main__")
    for split in ("test", "val"):
        out, src = pd.read_csv(f"{split}.csv"), pd.read_csv(paths["robust", split])
        pd.testing.assert_frame_equal(out.drop(columns=["net_score", "net_score_min"]), src)
    adv = pd.read_csv("adaptive.csv")
    assert len(adv) == 40 and adv["selector"].str.startswith("NET@").all()
    assert load_model("net.pt")[1].num_classes == 1
