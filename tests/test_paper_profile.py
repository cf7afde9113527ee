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
from robust_abstain.training import sweep_entry, train_model
from robust_abstain.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper():
    return yaml.safe_load((ROOT / "params-paper.yaml").read_text())


def test_paper_params_validate(paper):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    # the same sections (same dvc.yaml), but for the starting models of sweep entries (train@SECTION)
    inits = {e["init"] for e in paper["sweep"].values() if "init" in e}
    assert set(paper) - inits == set(default), "the profiles must have the same sections (same dvc.yaml)"
    assert inits == {"mma_base"} and paper["mma_base"]["zoo"]["name"] == "Ding2020MMA"
    for sec, sweep, head in (("finetune", "sweep", "loss"), ("cert_finetune", "cert_sweep", "cert_loss")):
        TrainConfig.from_params(paper[sec]["train"], f"{sec}.train")
        for key in paper[sweep]:
            e = sweep_entry(paper[sweep], key)
            LossConfig.from_params({**paper[sec]["loss"], **{k: v for k, v in e.items() if k != "init"}},
                                   f"{sweep}.{key}")
        LossConfig.from_params({**paper[sec]["loss"], **paper[head]}, head)
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


def test_full_profile_matches_the_default_schema():
    """params-full.yaml: the default's sections and keys (one dvc.yaml serves both), at full budget."""
    full = yaml.safe_load((ROOT / "params-full.yaml").read_text())
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(full) == set(default)
    for sec in ("core", "base", "noise_base", "finetune", "cert_finetune"):
        TrainConfig.from_params(full[sec]["train"], f"{sec}.train")
    assert full["data"]["fashion_mnist"]["n_test"] is None and full["evaluate"]["n_points"] == 10000
    assert full["finetune"]["train"]["epochs"] == 50 and "steps" not in full["finetune"]["train"]
    assert (full["certify"]["n"], full["certify"]["n_points"]) == (100000, 500)
    assert full["synthetic"] == default["synthetic"] | {"finetune": full["synthetic"]["finetune"]}


@pytest.mark.slow
def test_full_profile_runs_end_to_end_on_a_micro_budget(tmp_path):
    """The full profile's whole DAG, shrunk to seconds (tests/micro.py), on CPU: every report."""
    from micro import fake_fashion_mnist, make_project, micro_params
    from test_pipeline import sh
    proj = make_project(tmp_path / "proj", micro_params(fake_fashion_mnist(tmp_path / "fmnist"),
                                                        "params-full.yaml"))
    sh("git init -q && dvc init -q && dvc config core.analytics false && git add -A && git commit -qm init", proj)
    sh("dvc repro", proj)
    for f in ("summary.md", "compositions.md", "certified.md", "claims.md", "metrics.json"):
        assert (proj / "reports" / f).is_file(), f
    assert sh("dvc status", proj).stdout.strip().endswith("up to date.")
