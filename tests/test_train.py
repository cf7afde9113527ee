"""The training loop: schedule, resume after a kill, NaN handling, validation-only selection."""
import pytest
import torch

from robust_abstain.errors import ParamError, TrainingDivergedError
from robust_abstain.losses import LossConfig
from robust_abstain.models.checkpoint import ModelSpec
from robust_abstain.train import TrainConfig, fit, lr_at

SPEC = ModelSpec("mlp", (2,), 2, (0.5, 0.5), (0.29, 0.29), 16)


def test_lr_schedule_drops_at_75_percent():
    cfg = TrainConfig(epochs=8, lr=1e-3)
    assert [lr_at(cfg, e) for e in range(8)] == [1e-3] * 6 + [pytest.approx(1e-4)] * 2


def _fit(tiny_data, tmp_path, epochs=3, log=None, loss=LossConfig("trades", eps=0.05, pgd_steps=2), state="s.pt"):
    torch.manual_seed(0)
    model = SPEC.build()
    cfg = TrainConfig(epochs=epochs, lr=1e-2, batch_size=64, select="last")
    return fit(model, loss, tiny_data.split("train"), tiny_data.split("val"), cfg, tmp_path / state, log=log)


def test_resume_after_kill_gives_the_same_model(tiny_data, tmp_path):
    ref, hist = _fit(tiny_data, tmp_path, state="ref.pt")

    class Killed(Exception):
        pass

    def kill_after_two(epoch, metrics):
        if epoch == 2:
            raise Killed
    with pytest.raises(Killed):
        _fit(tiny_data, tmp_path, log=kill_after_two, state="run.pt")
    # the kill happened before epoch 2's state was saved: resume starts after epoch 1
    resumed, hist2 = _fit(tiny_data, tmp_path, state="run.pt")
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in hist2] == [1, 2, 3]


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
