"""The training loop: schedule, resume after a kill (and what a resume state must match), NaN
handling, validation-only selection, mixed precision, and augmentation that does not depend on the
number of DataLoader workers. Resume through the stage CLIs with a real SIGKILL: test_resume.py."""
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from robust_abstain.training import loop as train_mod
from robust_abstain.training import resume as resume_mod
from robust_abstain.errors import ParamError, TrainingDivergedError
from robust_abstain.losses import LossConfig
from robust_abstain.models.checkpoint import ModelSpec
from robust_abstain.training import (STATE_DIR, EpochBatches, TrainConfig, fit, lr_at, sources_digest,
                                  state_dir_for)

SPEC = ModelSpec("mlp", (2,), 2, (0.5, 0.5), (0.29, 0.29), 16)


def test_lr_schedule_drops_at_75_percent():
    cfg = TrainConfig(epochs=8, lr=1e-3)
    assert [lr_at(cfg, e) for e in range(8)] == [1e-3] * 6 + [pytest.approx(1e-4)] * 2


def _fit(tiny_data, tmp_path, epochs=3, log=None, loss=LossConfig("trades", eps=0.05, pgd_steps=2), state="s.pt"):
    torch.manual_seed(0)
    model = SPEC.build()
    cfg = TrainConfig(epochs=epochs, lr=1e-2, batch_size=64, select="last")
    return fit(model, loss, tiny_data.split("train"), tiny_data.split("val"), cfg, tmp_path / state, log=log)


class Killed(Exception):
    pass


def _kill_after_two(epoch, metrics):
    if epoch == 2:
        raise Killed


def assert_equal_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_resume_is_exact(run, tmp_path):
    """``run(log, state)`` trains 3 epochs; killed in epoch 2 and resumed, it must end with the
    weights of an uninterrupted run, and leave no state behind. Returns the resumed run's history
    and the state the killed run left."""
    ref, _ = run(None, "ref.pt")
    assert not (tmp_path / "ref.pt").exists()  # a finished fit removes its state
    with pytest.raises(Killed):
        run(_kill_after_two, "run.pt")
    left = torch.load(tmp_path / "run.pt", weights_only=True)
    resumed, hist = run(None, "run.pt")
    assert_equal_weights(ref, resumed)
    assert not (tmp_path / "run.pt").exists()
    return hist, left


def test_resume_after_kill_gives_the_same_model(tiny_data, tmp_path):
    hist, left = assert_resume_is_exact(lambda log, state: _fit(tiny_data, tmp_path, log=log, state=state),
                                        tmp_path)
    # the kill happened before epoch 2's state was saved: resume starts after epoch 1
    assert left["epoch"] == 1
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # 0: the initial model


def _dropout_fit(tiny_data, tmp_path, log=None, state="s.pt"):
    """A model that draws from torch's global RNG in every training step (dropout)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=64, select="last")
    return fit(model, LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"), cfg,
               tmp_path / state, log=log)


def test_global_rng_draws_resume_exactly(tiny_data, tmp_path):
    """Dropout draws from the global RNG: fit seeds it per (seed, epoch, batch), so a resumed run
    draws the same masks as an uninterrupted one (the state does not hold the global RNG)."""
    assert_resume_is_exact(lambda log, state: _dropout_fit(tiny_data, tmp_path, log, state), tmp_path)


def test_fit_leaves_the_global_rngs_as_it_found_them(tiny_data, tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    fit(model, LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"),
        TrainConfig(epochs=1, batch_size=64), tmp_path / "s.pt")
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_a_state_made_with_other_data_is_removed_not_resumed(tiny_data, tmp_path, capsys):
    """Same sizes, other values (e.g. another data.seed): the state must not be resumed."""
    with pytest.raises(Killed):
        _fit(tiny_data, tmp_path, log=_kill_after_two, state="run.pt")
    tiny_data.x_train.mul_(0.9)
    ref, _ = _fit(tiny_data, tmp_path, state="ref.pt")
    capsys.readouterr()
    other, hist = _fit(tiny_data, tmp_path, state="run.pt")
    assert "removing" in capsys.readouterr().out
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # 0: the initial model
    assert_equal_weights(ref, other)


def test_a_state_made_by_other_code_is_removed_not_resumed(tiny_data, tmp_path, monkeypatch, capsys):
    with pytest.raises(Killed):
        _fit(tiny_data, tmp_path, log=_kill_after_two, state="run.pt")
    monkeypatch.setattr(resume_mod, "source_fingerprint", lambda: "edited losses.py")
    capsys.readouterr()
    _, hist = _fit(tiny_data, tmp_path, state="run.pt")
    assert "removing" in capsys.readouterr().out and len(hist) == 4


def test_an_unreadable_state_is_removed_not_an_error(tiny_data, tmp_path, capsys):
    (tmp_path / "s.pt").write_bytes(b"torn or from another torch")
    _, hist = _fit(tiny_data, tmp_path, epochs=1)
    assert "removing" in capsys.readouterr().out and len(hist) == 2


def test_sources_digest_sees_every_source_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub/b.py").write_text("y = 2\n")
    h0 = sources_digest(tmp_path)
    (tmp_path / "sub/b.py").write_text("y = 3\n")
    h1 = sources_digest(tmp_path)
    (tmp_path / "sub/c.py").write_text("")
    h2 = sources_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("not code")
    assert len({h0, h1, h2}) == 3 and sources_digest(tmp_path) == h2


def test_state_dirs_mirror_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert state_dir_for("models/cert/headline.pt") == STATE_DIR / "models/cert"
    assert state_dir_for("models/finetune/headline.pt") != state_dir_for("models/cert/headline.pt")
    assert state_dir_for(tmp_path / "models/base.pt") == STATE_DIR / "models"
    outside = state_dir_for("/elsewhere/models/base.pt")
    assert outside.parts[0] == "state" and outside.as_posix().endswith("elsewhere/models")


def test_figure1_training_leaves_no_state(tmp_path):
    """The synthetic stage's three fits remove their states: a later run never draws Figure 1 from
    stale weights."""
    from robust_abstain.data import prepare
    from robust_abstain.figure1 import train_synthetic_models
    data = prepare("synthetic", {"n": 60, "n_test": 30, "std": 0.15, "val_fraction": 0.2}, 0)
    cfg = {"epochs": 1, "batch_size": 32, "select": "last"}
    models = train_synthetic_models(data, 0.08, cfg, cfg, era_beta=0.05, trades_beta=6.0, pgd_steps=1,
                                    state_dir=str(tmp_path / "state"))
    assert set(models) == {"standard", "TRADES", "ERA"}
    assert not any(Path(tmp_path).rglob("*.pt"))


def test_nan_loss_is_a_clear_error(tiny_data, tmp_path):
    data = tiny_data
    data.x_train[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="non-finite loss"):
        _fit(data, tmp_path, loss=LossConfig("ce"))


def test_selection_uses_validation(tiny_data, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=64, select="val_nat_acc")
    model, hist = fit(SPEC.build(), LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"), cfg,
                      tmp_path / "s.pt")
    best = max(h["val_nat_acc"] for h in hist)
    x, y = tiny_data.split("val").tensors
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(best)


@pytest.mark.parametrize("params,msg", [({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"), ({"lr": "fast"}, "lr"),
                                        ({"select": "test_acc"}, "select"), ({"epochs": 1.5}, "epochs")])
def test_bad_train_params(params, msg):
    with pytest.raises(ParamError, match=msg):
        TrainConfig.from_params(params, "finetune.train")


# ----------------------------------------------------------------------------- mixed precision
def _amp_fit(tiny_data, tmp_path, amp, epochs=2, log=None, state="s.pt"):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, lr=1e-2, batch_size=64, select="last", amp=amp)
    return fit(SPEC.build(), LossConfig("trades", eps=0.05, pgd_steps=2), tiny_data.split("train"),
               tiny_data.split("val"), cfg, tmp_path / state, log=log)


def _cpu_fp16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        torch.amp.GradScaler("cpu")
        return out.dtype == torch.float16
    except (RuntimeError, AttributeError, TypeError):
        return False


def test_amp_bf16_is_close_to_fp32(tiny_data, tmp_path):
    ref, _ = _amp_fit(tiny_data, tmp_path, "none", state="fp32.pt")
    low, hist = _amp_fit(tiny_data, tmp_path, "bf16", state="bf16.pt")
    assert all(math.isfinite(h["train_loss"]) for h in hist[1:])
    diffs = [(a - b).abs().max().item() for a, b in zip(ref.state_dict().values(), low.state_dict().values())]
    assert max(diffs) < 0.1  # close, not necessarily equal
    assert all(v.dtype == torch.float32 for v in low.state_dict().values())  # weights stay fp32


def test_amp_fp16_with_scaler_resumes_exactly(tiny_data, tmp_path):
    if not _cpu_fp16_autocast():
        pytest.skip("this torch build has no CPU fp16 autocast / GradScaler")
    hist, left = assert_resume_is_exact(lambda log, state: _amp_fit(tiny_data, tmp_path, "fp16", epochs=3,
                                                                    log=log, state=state), tmp_path)
    assert len(hist) == 4 and all(math.isfinite(h["train_loss"]) for h in hist[1:])
    assert "scaler" in left


# ----------------------------------------------------------------------------- augmentation workers
def _image_data(n=160, side=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, side, side), generator=g).float() / 255
    y = (x[:, 0].mean((1, 2)) > 0.5).long()
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])


def _aug_fit(tmp_path, augment, workers, state):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", (3, 8, 8), 2, (0.5,) * 3, (0.29,) * 3, 4)
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=32, select="last", augment=augment, workers=workers)
    train, val = _image_data()
    loss = LossConfig("trades", eps=0.05, pgd_steps=1)
    model, _ = fit(spec.build(), loss, train, val, cfg, tmp_path / state)
    return model


@pytest.mark.parametrize("augment", ["crop_flip", "autoaugment"])
def test_augmented_batches_do_not_depend_on_workers(tmp_path, augment):
    a = _aug_fit(tmp_path, augment, 0, "w0.pt")
    b = _aug_fit(tmp_path, augment, 1, "w1.pt")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_epoch_batches_are_seeded_per_batch():
    x = torch.rand(10, 1, 8, 8)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    ds = EpochBatches(x, torch.zeros(10, dtype=torch.long), perm, 4, "crop_flip", seed=3, epoch=1)
    assert len(ds) == 3 and ds[2][0].shape == (2, 1, 8, 8)
    assert torch.equal(ds[1][0], ds[1][0])                       # any order, any process
    assert not torch.equal(ds[1][0], EpochBatches(x, ds.y, perm, 4, "crop_flip", 3, 2)[1][0])  # epoch matters
    plain = EpochBatches(x, ds.y, perm, 4, None, 3, 1)
    assert torch.equal(plain[0][0], x[perm[:4]])                 # no augmentation: the plain batch


@pytest.mark.parametrize("params,msg", [({"amp": "fp8"}, "amp"), ({"amp": None}, "amp"),
                                        ({"workers": -1}, "workers"), ({"workers": 1.5}, "workers"),
                                        ({"workers": "2"}, "workers")])
def test_bad_amp_and_workers(params, msg):
    with pytest.raises(ParamError, match=msg):
        TrainConfig.from_params(params, "finetune.train")


def test_amp_and_workers_params_accepted():
    cfg = TrainConfig.from_params({"amp": "bf16", "workers": 2}, "finetune.train")
    assert (cfg.amp, cfg.workers) == ("bf16", 2)


def test_equal_states_save_to_equal_bytes(tmp_path):
    """Checkpoints are byte-reproducible, so a re-run with the same params leaves dvc.lock as is."""
    from robust_abstain.io import load_checkpoint, save_checkpoint
    state = {"model": SPEC.build().state_dict(), "meta": {"epoch": 1}}
    save_checkpoint(state, tmp_path / "a.pt")
    save_checkpoint(state, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert load_checkpoint(tmp_path / "a.pt")["meta"] == {"epoch": 1}


def test_a_budget_in_steps_follows_the_data():
    """``steps`` fixes the optimiser steps whatever the training set's size: 240 points in batches
    of 64 are 4 batches an epoch, so 10 steps are two whole epochs and a third cut to 2 batches."""
    from robust_abstain.training import budget
    plan = budget(TrainConfig(epochs=50, steps=10, batch_size=64), 240)
    assert (plan.epochs, plan.last_batches) == (3, 2)
    assert budget(TrainConfig(epochs=50, steps=8, batch_size=64), 240).last_batches is None
    assert budget(TrainConfig(epochs=5, batch_size=64), 240).epochs == 5  # no steps: epochs rule


def test_a_steps_budget_runs_exactly_those_steps(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = SPEC.build()
    seen = []
    counting = LossConfig("ce")
    real = train_mod.train_step

    def step(*a, **k):
        seen.append(1)
        return real(*a, **k)

    cfg = TrainConfig(steps=6, lr=1e-2, batch_size=64, select="last")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "train_step", step)
        _, hist = fit(model, counting, tiny_data.split("train"), tiny_data.split("val"), cfg, tmp_path / "s.pt")
    n_batches = -(-len(tiny_data.y_train) // 64)
    assert len(seen) == 6 and len(hist) == 1 + -(-6 // n_batches)


def test_selection_falls_back_to_the_initial_model(tiny_data, tmp_path, capsys):
    """A fine-tune that only makes the validation criterion worse (here: a huge lr wrecks the
    model) keeps the initial weights, and says so."""
    torch.manual_seed(0)
    init, _ = _fit(tiny_data, tmp_path, epochs=3)
    start = {k: v.clone() for k, v in init.state_dict().items()}
    cfg = TrainConfig(epochs=2, lr=50.0, batch_size=64, select="val_nat_acc", max_nat_drop=0.0)
    capsys.readouterr()
    model, hist = fit(init, LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"), cfg,
                      tmp_path / "ft.pt", fine_tune=True)
    assert hist[0]["epoch"] == 0 and hist[0]["selected"] == 1.0
    assert all(h["val_nat_acc"] < hist[0]["val_nat_acc"] for h in hist[1:])
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert "keeping the initial weights" in capsys.readouterr().out


def test_the_accuracy_guard_refuses_a_better_scoring_collapse(tiny_data, tmp_path):
    """With ``select="last"`` every epoch outranks the initial model, but the guard
    (``max_nat_drop``) refuses epochs that lose accuracy against it."""
    torch.manual_seed(0)
    init, _ = _fit(tiny_data, tmp_path, epochs=3)
    cfg = TrainConfig(epochs=2, lr=50.0, batch_size=64, select="last", max_nat_drop=0.0)
    _, hist = fit(init, LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"), cfg,
                  tmp_path / "ft.pt", fine_tune=True)
    assert [h["selected"] for h in hist] == [1.0, 0.0, 0.0]
    # from scratch the random start is validated (epoch 0) but never selected, guard or not
    torch.manual_seed(0)
    _, hist = fit(SPEC.build(), LossConfig("ce"), tiny_data.split("train"), tiny_data.split("val"), cfg,
                  tmp_path / "scratch.pt")
    assert hist[0]["epoch"] == 0 and hist[0]["selected"] == 0.0 and hist[-1]["selected"] == 1.0
