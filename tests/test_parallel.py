"""Pieces of work in worker processes (robust_abstain.parallel) give the same results as in one
process: attack records, adaptive records, certification, training over shards; and checkpoint bytes
depend on their content only."""
import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robust_abstain.analysis.selectors import SelectorSpec
from robust_abstain.attacks.autoattack import AttackBudget
from robust_abstain.errors import ParamError
from robust_abstain.evaluation.adaptive import AttackConfig, adaptive_records
from robust_abstain.evaluation.certify import certify_dataset
from robust_abstain.evaluation.empirical import PointSet, empirical_records, records_in_pieces
from robust_abstain.evaluation.smoothing import Smooth
from robust_abstain.io import save_checkpoint
from robust_abstain.losses import LossConfig
from robust_abstain.models.checkpoint import ModelSpec
from robust_abstain.parallel import chunks, piece_seed, pmap, worker_count
from robust_abstain.training import TrainConfig, fit

SPEC = ModelSpec("cnn", (1, 8, 8), 3, (0.5,), (0.25,), 4)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SPEC.build().eval()


def _points(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def _square(v: int) -> int:
    if v == 3:
        raise ParamError("three is not allowed")
    return v * v


def test_pmap_keeps_order_takes_closures_and_raises_a_pieces_error(monkeypatch):
    offset = 10
    assert pmap(lambda v: v + offset, range(7), workers=2) == list(range(10, 17))
    assert pmap(_square, [0, 1, 2], workers=2) == [0, 1, 4]
    with pytest.raises(ParamError, match="three is not allowed"):
        pmap(_square, range(5), workers=2)
    monkeypatch.setenv("RA_WORKERS", "0")
    with pytest.raises(ParamError, match="RA_WORKERS must be a positive integer"):
        worker_count()
    monkeypatch.setenv("RA_WORKERS", "3")
    assert worker_count() == 3 and worker_count(torch.device("cpu")) == 3


def test_pieces_depend_on_the_size_only_and_piece_zero_keeps_the_seed():
    assert chunks(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert piece_seed(5, 0) == 5 and piece_seed(5, 1) != piece_seed(5, 2)
    assert all(0 <= piece_seed(5, k) < 2**31 for k in range(1, 20))
    with pytest.raises(ParamError):
        chunks(3, 0)


def test_records_in_pieces_equal_for_one_and_two_workers_and_piece_zero_equals_an_unsplit_run(monkeypatch):
    model = _model()
    x, y = _points(23)
    sets = {"test": PointSet(x, y, torch.arange(23)), "val": PointSet(x[:9], y[:9], torch.arange(9))}
    budget = AttackBudget(steps=5, batch_size=8, seed=3)
    runs = {}
    for w in ("1", "2"):
        monkeypatch.setenv("RA_WORKERS", w)
        runs[w] = records_in_pieces(model, sets, 0.1, ["apgd-ce"], budget, sr_scales=(2,), desc=None)
    for name in sets:
        a, b = runs["1"][name].records, runs["2"][name].records
        pd.testing.assert_frame_equal(a, b)
        assert runs["1"][name].cost.evaluations == runs["2"][name].cost.evaluations
    assert runs["1"]["test"].records["index"].tolist() == list(range(23))
    first = empirical_records(model, x[:8], y[:8], torch.arange(8), 0.1, attacks=["apgd-ce"], budget=budget,
                              progress=False)
    pd.testing.assert_frame_equal(first, runs["1"]["test"].records.iloc[:8].reset_index(drop=True))


def test_known_columns_are_reused_not_attacked_again():
    model = _model()
    x, y = _points(6)
    budget = AttackBudget(steps=5, batch_size=8)
    df = empirical_records(model, x, y, torch.arange(6), 0.1, attacks=["apgd-ce"], budget=budget, progress=False)
    fake = {c: torch.from_numpy(df[c].to_numpy().copy()) for c in ("pred", "conf", "adv_pred_1x", "adv_conf_1x",
                                                                   "adv_pred_2x", "adv_conf_2x")}
    fake["adv_pred_1x"] = torch.full_like(fake["pred"], 2)     # "broken" everywhere at eps, by fiat
    (ev,) = records_in_pieces(model, {"t": PointSet(x, y, torch.arange(6), fake)}, 0.1, ["apgd-ce"], budget,
                              sr_scales=(), desc=None).values()
    assert (ev.records["adv_pred_1x"] == 2).all() and "apgd-ce" not in ev.cost.evaluations


def test_adaptive_records_equal_for_one_and_two_workers(monkeypatch):
    robust_model, core_model = _model(0), _model(1)
    x, y = _points(12)
    cols = {}
    for name, m in (("robust", robust_model), ("core", core_model)):
        cols[name] = empirical_records(m, x, y, torch.arange(12), 0.1, steps=3, batch_size=5, progress=False)
    cfg = AttackConfig(eps=0.1, steps=3, push_steps=2, batch_size=5)
    specs = [SelectorSpec("ERI"), SelectorSpec("SR", 0.4)]
    out = {}
    for w in ("1", "2"):
        monkeypatch.setenv("RA_WORKERS", w)
        out[w] = adaptive_records(robust_model, core_model, cols["robust"], cols["core"], specs, x, y, cfg)
    pd.testing.assert_frame_equal(out["1"], out["2"])
    assert len(out["1"]) == 2 * 12


def test_certification_equal_for_one_and_two_workers(tmp_path, monkeypatch):
    model = _model()
    x, y = _points(7)
    files = {}
    for w in ("1", "2"):
        monkeypatch.setenv("RA_WORKERS", w)
        certify_dataset(Smooth(model, 3, 0.25), x, y, torch.arange(7) * 3, tmp_path / f"c{w}.csv", n0=10, n=50,
                        alpha=0.01, batch_size=32, seed=4, points_per_call=2, progress=False)
        files[w] = (tmp_path / f"c{w}.csv").read_bytes()
    assert files["1"] == files["2"]


def test_training_over_batch_splits_gives_the_same_weights_in_one_and_two_workers(tmp_path, monkeypatch):
    x, y = _points(96, seed=2)
    xv, yv = _points(24, seed=3)
    train, val = torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(xv, yv)
    loss = LossConfig("trades", beta=1.0, eps=0.1, pgd_steps=2)
    cfg = TrainConfig(steps=6, lr=1e-2, batch_size=32, select="last", batch_splits=2)
    runs = {}
    for w in ("1", "2"):
        monkeypatch.setenv("RA_WORKERS", w)
        runs[w] = fit(_model(), loss, train, val, cfg, tmp_path / f"s{w}.pt")
    (a, ha), (b, hb) = runs["1"], runs["2"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert ha == hb
    one, _ = fit(_model(), loss, train, val, TrainConfig(steps=6, lr=1e-2, batch_size=32, select="last"),
                 tmp_path / "one.pt")
    assert not torch.equal(one.state_dict()["1.0.weight"], a.state_dict()["1.0.weight"])  # splits draw their own


def test_batch_splits_refuse_the_fp16_scaler():
    with pytest.raises(ParamError, match="batch_splits > 1 does not work with amp: fp16"):
        TrainConfig.from_params({"batch_splits": 2, "amp": "fp16"}, "t")


def test_checkpoint_bytes_depend_on_content_only(tmp_path):
    """Pickle shares an object it meets twice: a history whose dicts share their key strings (a run)
    and one whose keys are separate objects (loaded back from a resume state) must give one file."""
    key = "val_loss"
    shared = {"history": [{key: 0.5}, {key: 0.25}], "w": torch.ones(2)}
    separate = pickle.loads(pickle.dumps({"history": [{"val_loss": 0.5}], "w": torch.ones(2)}))
    separate["history"].append(pickle.loads(pickle.dumps({"val_loss": 0.25})))
    (k0,), (k1,) = separate["history"][0], separate["history"][1]
    assert k0 is not k1   # equal strings, two objects
    save_checkpoint(shared, tmp_path / "a.pt")
    save_checkpoint(separate, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    sd = _model().state_dict()
    save_checkpoint({"state_dict": sd}, tmp_path / "m.pt")
    back = torch.load(io.BytesIO((tmp_path / "m.pt").read_bytes()), weights_only=True)["state_dict"]
    assert getattr(back, "_metadata", None) == getattr(sd, "_metadata", None)  # module versions kept
    assert np.all([torch.equal(back[k], v) for k, v in sd.items()])
