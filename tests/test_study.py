"""The budget study (study.py): its plateau rule by hand, and a checkpoint at step s is the model a
``steps: s`` budget at the same constant lr trains (so a budget read off a curve is trainable)."""
import pandas as pd
import torch
from torch import nn

from robust_abstain.losses import LossConfig
from robust_abstain.training.study import Run, plateau, run_curve
from robust_abstain.training import TrainConfig, fit


def test_plateau_is_the_first_checkpoint_staying_within_tol_of_the_last_value():
    steps = pd.Series([0, 100, 200, 400, 800])
    assert plateau(steps, pd.Series([0.1, 0.70, 0.795, 0.80, 0.81]), 0.02) == 200  # 0.78 would be 0.03 off
    assert plateau(steps, pd.Series([0.1, 0.80, 0.70, 0.80, 0.81]), 0.02) == 400  # a dip resets it
    assert plateau(steps, pd.Series([0.5] * 5), 0.0) == 0
    assert plateau(steps[::-1], pd.Series([0.81, 0.80, 0.795, 0.70, 0.1]), 0.02) == 200  # any order


def test_a_checkpoint_is_the_model_of_that_step_budget(tiny_data, tmp_path):
    """6 steps of the study's curve and a 6-step ``fit`` (constant lr, select last) take the same
    steps on the same batches: equal natural accuracy, and the curve measures step 0 as well."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    cfg = TrainConfig(steps=6, lr=1e-2, lr_decay_at=1.0, batch_size=64, select="last")
    run = Run("t", "ce", LossConfig("ce"), cfg, (0, 3, 6), eps=0.05)
    val = tiny_data.split("val")
    curve = run_curve(run, model, tiny_data.split("train"), val, torch.device("cpu"), attack_steps=2,
                      progress=False)
    assert curve["step"].tolist() == [0, 3, 6] and set(curve["family"]) == {"t"}
    trained, _ = fit(model, LossConfig("ce"), tiny_data.split("train"), val, cfg, tmp_path / "s.pt")
    x, y = val.tensors
    assert curve["nat_acc"].iloc[-1] == (trained(x).argmax(1) == y).float().mean().item()
    assert (curve[["rob_acc_1x", "rob_inacc_1x"]].sum(axis=1) <= curve["nat_acc"] + 1).all()
