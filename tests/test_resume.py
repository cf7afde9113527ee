"""Exact resume through the stage CLIs. A training stage killed with a real SIGKILL in the middle of
epoch 2, then run again (it prints "resuming after epoch 1/2"), must end with the checkpoint of an
uninterrupted run, byte for byte: for CE (`train.py core`, the default's one process per run), TRADES
(`train.py base`), ERA (`finetune.py`) and CRA (`finetune.py --section cert_finetune`). The last three
split each batch in two (``train.batch_splits: 2``, training/data_parallel.py): the uninterrupted run
computes them in one process, the killed and resumed one in two (``RA_WORKERS``), so the same bytes
also show that the weights do not depend on the number of workers. The process kills
itself at a fixed place (``RA_TEST_KILL_AT=2:3``: before batch 3 of epoch 2, see
robust_abstain.training.loop), so the test does not depend on timing. Also: resume state is never in
git."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from micro import ROOT, fake_fashion_mnist, micro_params

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
ENV.pop("RA_TEST_KILL_AT", None)
ENV.pop("RA_THREADS", None)
WORKERS = {"ref": "1", "run": "2"}   # processes computing the splits of a batch
INIT = "init.pt"  # an untrained model to fine-tune from
CASES = {  # loss -> (stage arguments, output)
    "ce": (["train.py", "core"], "models/core.pt"),          # one split: the default's training
    "trades": (["train.py", "base"], "models/base.pt"),
    "era": (["finetune.py", "--loss", "sweep.era-1", "--init", INIT], "models/finetune/era-1.pt"),
    "cra": (["finetune.py", "--section", "cert_finetune", "--loss", "cert_sweep.cra-4", "--init", INIT],
            "models/cert/cra-4.pt"),
}


def resume_params(data_root: Path) -> dict:
    """The micro profile with 2 epochs of at least 4 batches for each case, keeping the last epoch
    (so the compared weights are those that epoch 2 made)."""
    p = micro_params(data_root)
    p["base"]["width"] = 4
    p["core"]["width"] = 4
    p["core"]["train"].update(epochs=2, steps=None, n_train=64, n_val=16, batch_size=16, select="last")
    p["base"]["train"].update(epochs=2, steps=None, n_train=64, n_val=16, batch_size=16, select="last")
    p["finetune"]["train"].update(epochs=2, steps=None, n_train=48, n_val=16, batch_size=12, select="last")
    p["cert_finetune"]["train"].update(epochs=2, steps=None, n_train=24, n_val=12, batch_size=6, select="last")
    for sec in ("base", "finetune", "cert_finetune"):
        p[sec]["train"]["batch_splits"] = 2   # a batch's two splits in one or two workers (training/data_parallel.py)
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """params.yaml, data/prepared.pt and init.pt, shared (read-only) by every run folder."""
    tmp = tmp_path_factory.mktemp("resume")
    (tmp / "params.yaml").write_text(yaml.safe_dump(resume_params(fake_fashion_mnist(tmp / "fmnist"))))
    subprocess.run([sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp, env=ENV, check=True,
                   capture_output=True)
    from robust_abstain.data import load_prepared
    from robust_abstain.models.checkpoint import save_model
    from robust_abstain.training import model_spec
    spec = model_spec({"arch": "cnn", "width": 4}, load_prepared(tmp / "data/prepared.pt"), "init")
    torch.manual_seed(0)
    save_model(spec.build(), spec, tmp / INIT)
    return tmp


def start(project: Path, name: str, case: str, kill_at: str | None = None) -> subprocess.Popen:
    """Start the stage of ``case`` in its own folder ``name`` (its own ``state/``)."""
    cwd = project / case / name
    if not cwd.exists():
        cwd.mkdir(parents=True)
        for f in ("params.yaml", "data", INIT):
            (cwd / f).symlink_to(project / f)
    args, out = CASES[case]
    env = {**ENV, "RA_WORKERS": WORKERS[name], **({"RA_TEST_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / args[0]), *args[1:], "--out", out],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def states(folder: Path) -> list[Path]:
    return sorted((folder / "state").rglob("*.pt"))


@pytest.fixture(scope="module")
def runs(project) -> dict[str, dict]:
    """For every case at once: an uninterrupted run ("ref") and a run killed in epoch 2, then that
    run again ("resumed"); the state the kill left is recorded in between."""
    first = {c: (start(project, "ref", c), start(project, "run", c, kill_at="2:3")) for c in CASES}
    out = {c: {"ref": finish(r), "killed": finish(k)} for c, (r, k) in first.items()}
    for c in CASES:
        out[c]["left"] = [(p, torch.load(p, weights_only=True)["epoch"]) for p in states(project / c / "run")]
        out[c]["out_after_kill"] = (project / c / "run" / CASES[c][1]).exists()
    second = {c: start(project, "run", c) for c in CASES}
    for c, p in second.items():
        out[c]["resumed"] = finish(p)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_mid_epoch_and_rerun_equals_uninterrupted(project, runs, case):
    r = runs[case]
    (rc_ref, log_ref), (rc_killed, log_killed), (rc, log) = r["ref"], r["killed"], r["resumed"]
    assert rc_ref == 0, log_ref
    assert rc_killed == -signal.SIGKILL, log_killed
    assert "epoch 1:" in log_killed and "epoch 2:" not in log_killed  # killed in mid-epoch 2
    assert not r["out_after_kill"] and [e for _, e in r["left"]] == [1]
    assert rc == 0, log
    assert "resuming after epoch 1/2" in log
    out = CASES[case][1]
    a = torch.load(project / case / "ref" / out, weights_only=True)
    b = torch.load(project / case / "run" / out, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["meta"] == b["meta"]  # the same per-epoch history, validation metrics included
    # the same bytes (so DVC sees the same output): pickle's sharing of equal strings does not
    # depend on whether the history was loaded back from a resume state
    assert (project / case / "ref" / out).read_bytes() == (project / case / "run" / out).read_bytes()
    assert states(project / case / "run") == states(project / case / "ref") == []  # none left behind


def test_resume_state_is_never_in_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    assert git("ls-files", "state").stdout == ""
    assert git("check-ignore", "-q", "state/models/base.state.pt").returncode == 0
    assert git("check-ignore", "-q", "state/synthetic/ERA.state.pt").returncode == 0


def test_an_evaluate_stage_writes_the_same_bytes_with_one_and_two_workers(project):
    """Records, the stronger attacks' records and their cost: pieces of points in one process or in
    two worker processes (micro profile: pieces of 16 of 40 test and 30 validation points)."""
    outs = ("t.csv", "v.csv", "s.csv", "s.json")
    files = {}
    for w in ("1", "2"):
        cwd = project / f"evaluate-{w}"
        cwd.mkdir()
        for f in ("params.yaml", "data", INIT):
            (cwd / f).symlink_to(project / f)
        r = subprocess.run([sys.executable, str(ROOT / "stages/evaluate.py"), "--model", INIT, "--out", outs[0],
                            "--val-out", outs[1], "--strong-out", outs[2], "--cost-out", outs[3]],
                           cwd=cwd, env={**ENV, "RA_WORKERS": w}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        files[w] = [(cwd / f).read_bytes() for f in outs]
    assert files["1"] == files["2"]
