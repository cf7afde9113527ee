"""The paper profile: its params validate offline, and a RobustBench model becomes a pipeline
checkpoint through the same train stage code (`source: zoo`), without network."""
import socket
from pathlib import Path

import pytest
import torch
import yaml

from robust_abstain.data import Prepared
from robust_abstain.losses import LossConfig
from robust_abstain.models.checkpoint import load_model
from robust_abstain.models.zoo import build_zoo_architecture, zoo_path
from robust_abstain.pipeline import sweep_entry, train_model
from robust_abstain.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper():
    return yaml.safe_load((ROOT / "params-paper.yaml").read_text())


def test_paper_params_validate(paper):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(paper) == set(default), "the profiles must have the same sections (same dvc.yaml)"
    for sec, sweep, head in (("finetune", "sweep", "loss"), ("cert_finetune", "cert_sweep", "cert_loss")):
        TrainConfig.from_params(paper[sec]["train"], f"{sec}.train")
        for key in paper[sweep]:
            e = sweep_entry(paper[sweep], key)
            LossConfig.from_params({**paper[sec]["loss"], "name": e["name"], "beta": e["beta"]})
        LossConfig.from_params({**paper[sec]["loss"], **paper[head]})
    assert paper["finetune"]["train"]["epochs"] == 50 and paper["evaluate"]["steps"] == 40
    assert abs(paper["evaluate"]["eps"] - 2 / 255) < 1e-12
    assert (paper["certify"]["n0"], paper["certify"]["n"], paper["certify"]["alpha"]) == (100, 100000, 0.001)
    assert paper["certify"]["n_points"] == 500


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a test tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_zoo_source_becomes_a_pipeline_checkpoint(tmp_path, no_network):
    name, dataset, threat = "Sehwag2021Proxy_R18", "cifar10", "L2"
    torch.manual_seed(0)
    ref = build_zoo_architecture(name, dataset, threat).eval()
    path = zoo_path(name, dataset, threat, tmp_path / "zoo")
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    x = torch.rand(4, 3, 32, 32)
    data = Prepared("cifar10", x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long),
                    x, torch.zeros(4, dtype=torch.long), 10, [0.5] * 3, [0.25] * 3)
    p = {"source": "zoo", "zoo": {"name": name, "dataset": dataset, "threat_model": threat,
                                  "model_dir": str(tmp_path / "zoo")}}
    out = tmp_path / "base.pt"
    train_model(p, data, out, tmp_path / "state", "base")
    model, spec, meta = load_model(out)
    assert spec.arch == f"zoo:{dataset}/{threat}/{name}" and meta["source"] == "robustbench"
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
