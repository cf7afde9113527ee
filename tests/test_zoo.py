"""Offline tests of the RobustBench compatibility layer and the model zoo: no test touches the
network (a socket guard makes any connection attempt fail loudly)."""

from __future__ import annotations

import socket
import sys
from collections import OrderedDict

import pytest
import torch

from robust_abstain.compat import import_robustbench
from robust_abstain.errors import CheckpointError, ParamError
from robust_abstain.models import (CORE_CHOICES, PAPER_MODELS, UnsafeCheckpointError, build_zoo_architecture,
                                   fetch_model, load_zoo_model, zoo_path)

NAME, DATASET, THREAT = "Sehwag2021Proxy_R18", "cifar10", "L2"   # ResNet-18: the smallest paper model


class NetworkUsed(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkUsed("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    model = build_zoo_architecture(NAME, DATASET, THREAT).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_import_robustbench_offline():
    rb = import_robustbench()
    assert rb.__name__ == "robustbench" and hasattr(rb, "load_model")
    import autoattack
    import pyautoattack.state
    from autoattack.state import EvaluationState

    assert EvaluationState is pyautoattack.state.EvaluationState
    assert issubclass(autoattack.AutoAttack, pyautoattack.AutoAttack)
    assert sys.modules["autoattack.autopgd_base"] is sys.modules["pyautoattack.autopgd_base"]
    # the reference spellings robustbench.eval.benchmark uses
    aa = autoattack.AutoAttack(torch.nn.Linear(4, 2), norm="Linf", eps=0.1, version="standard",
                               device="cpu", log_path=None)
    assert aa.norm == "Linf" and aa.epsilon == 0.1


def test_paper_models_exist_in_robustbench():
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    for e in PAPER_MODELS.values():
        assert e.name in model_dicts[BenchmarkDataset(e.dataset)][ThreatModel(e.threat_model)], e.key
    assert CORE_CHOICES["cifar10"].name == "Standard" and CORE_CHOICES["cifar100"].source == "train"
    assert CORE_CHOICES["mtsd"].source == "train"


def test_load_zoo_model_from_robustbench_path(tmp_path, reference_model):
    path = zoo_path(NAME, DATASET, THREAT, tmp_path)
    assert path == tmp_path / "cifar10" / "L2" / f"{NAME}.pt"
    path.parent.mkdir(parents=True)
    # the wrapping RobustBench checkpoints use: a 'state_dict' entry and DataParallel prefixes
    wrapped = {"state_dict": OrderedDict(("module." + k, v) for k, v in reference_model.state_dict().items()),
               "epoch": 200}
    torch.save(wrapped, path)
    model = load_zoo_model(NAME, DATASET, THREAT, tmp_path)
    assert not model.training
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_model(x), atol=1e-5)
    assert fetch_model(NAME, DATASET, THREAT, tmp_path) == path and path.is_file()


@pytest.mark.parametrize("content", [
    b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>",
    b"",
    b"PK\x03\x04 truncated zip",
])
def test_corrupt_checkpoint_is_removed(tmp_path, content):
    path = zoo_path(NAME, DATASET, THREAT, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="REMOVED"):
        load_zoo_model(NAME, DATASET, THREAT, tmp_path)
    assert not path.exists()


class Opaque:
    """A class outside the weights-only allowlist."""

    def __init__(self):
        self.x = 1


def test_unsafe_checkpoint_is_kept(tmp_path):
    path = zoo_path(NAME, DATASET, THREAT, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "extra": Opaque()}, path)
    with pytest.raises(UnsafeCheckpointError, match="Opaque"):
        fetch_model(NAME, DATASET, THREAT, tmp_path)
    assert path.exists()


def test_wrong_weights_and_bad_names(tmp_path, reference_model):
    path = zoo_path(NAME, DATASET, THREAT, tmp_path)
    path.parent.mkdir(parents=True)
    sd = reference_model.state_dict()
    sd.pop(next(iter(sd)))
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_zoo_model(NAME, DATASET, THREAT, tmp_path)
    with pytest.raises(ParamError, match="no model"):
        fetch_model("NoSuchModel2099", DATASET, THREAT, tmp_path)
    with pytest.raises(ParamError, match="dataset"):
        zoo_path(NAME, "mnist", THREAT, tmp_path)


def test_missing_file_download_fails_cleanly_offline(tmp_path):
    with pytest.raises(CheckpointError, match="download of .* failed"):
        fetch_model(NAME, DATASET, THREAT, tmp_path)
    folder = tmp_path / "cifar10" / "L2"
    assert not (folder / f"{NAME}.pt").exists()
    assert list(folder.iterdir()) == []          # no temporary file left behind
