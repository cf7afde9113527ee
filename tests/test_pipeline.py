"""End to end on a micro profile, in a temporary git repository: `dvc repro`; sharded certification
run in parallel by scripts/repro_parallel.py; `dvc exp run --queue -S loss.beta=...` with two queue
workers; bad input through the stage CLIs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from micro import fake_fashion_mnist, make_project, micro_params

BIN = Path(sys.executable).parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "RA_WORKERS": "2"}


def sh(cmd, cwd, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, shell=True, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = fake_fashion_mnist(tmp / "fmnist")
    proj = make_project(tmp / "proj", micro_params(data))
    sh("git init -q && dvc init -q && dvc config core.analytics false && git add -A && git commit -qm init", proj)
    return proj


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
def test_dvc_repro(project):
    r = sh("dvc repro", project)
    stages = ran(r.stdout)
    assert {"prepare", "train@core", "train@base", "finetune@era-1", "finetune@headline-s0", "report",
            "certify@cra-4-0", "certify_merge@cra-4", "adaptive@headline-s0", "synthetic"} <= stages
    reports = project / "reports"
    for f in ("summary.md", "splits.md", "abstain.md", "compositions.md", "adaptive.md", "certified.md",
              "metrics.json", "claims.md", "figures/fig1_synthetic.png", "figures/rob_acc_vs_rob_inacc.png",
              "figures/selection_pareto.png", "figures/compositions.png", "figures/certified_accuracy.png"):
        assert (reports / f).is_file(), f
    metrics = json.loads((reports / "metrics.json").read_text())
    for k in ("core/nat_acc", "headline/rob_acc", "headline/rob_inacc", "best_composition/rob_acc"):
        assert 0 <= metrics[k] <= 1
    assert sh("dvc status", project).stdout.strip().endswith("up to date.")
    sh("git add -A && git commit -qm baseline", project)


@pytest.mark.slow
def test_same_params_same_metrics(project):
    """Reproducible on CPU: re-running a stage from scratch gives the same records."""
    rec = project / "results/records/era-1.csv"
    if not rec.exists():
        sh("dvc repro evaluate@era-1", project)
    before = rec.read_text()
    sh("dvc repro -f -s finetune@era-1 && dvc repro -f -s evaluate@era-1", project)
    assert rec.read_text() == before


def _set_params(project, section, key, value):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.mark.slow
def test_sharded_certification_in_parallel_equals_unsharded(project):
    """certify.shards: [0, 1] splits each model's certification over two stages; run at once by
    scripts/repro_parallel.py, then merged by dvc repro, they give the one-shard records byte for
    byte (noise is seeded per point)."""
    if not (project / "results/certified/cra-4.csv").exists():
        sh("dvc repro", project)
    before = {f.name: f.read_bytes() for f in (project / "results/certified").glob("*.csv")}
    assert len(before) == 3
    _set_params(project, "certify", "shards", [0, 1])
    try:
        r = sh(f"{sys.executable} scripts/repro_parallel.py -j 2 'certify@*'", project)
        assert "wave 1: 6 stage(s), 2 at a time" in r.stdout
        for key in ("cra-4", "noise_base", "headline"):
            for s in (0, 1):
                assert list((project / ".dvc/tmp/repro_parallel").glob(f"certify@{key}-{s}.log"))
                assert (project / f"results/certify_shards/{key}/{s}.csv.json").is_file()
        r = sh("dvc repro", project)
        again = ran(r.stdout)
        assert {"certify_merge@cra-4", "certify_merge@noise_base", "certify_merge@headline"} <= again
        assert not {s for s in again if s.startswith("certify@")} and "report" not in again
        after = {f.name: f.read_bytes() for f in (project / "results/certified").glob("*.csv")}
        assert after == before
        assert sh("dvc status", project).stdout.strip().endswith("up to date.")
        _set_params(project, "certify", "shards", [0, 2])
        r = stage(project, "stages/certify.py", "--model", "models/cert/cra-4.pt", "--shard", "1",
                  "--out", "results/bad.csv")
        assert r.returncode == 1 and "certify.shards must be the list [0, 1, ..., k-1]" in r.stderr
        assert not (project / "results/bad.csv").exists()
    finally:
        _set_params(project, "certify", "shards", [0, 1])
    sh("git add -A && git commit -qm shards", project)


@pytest.mark.slow
def test_queued_beta_sweep_runs_with_two_workers(project):
    """`dvc exp run --queue -S loss.beta=...` + `dvc queue start -j 2`: two headline betas as
    parallel experiments, each re-running only the stages that depend on loss.beta (not the data,
    the core or base models, the sweep or the certified track); `dvc exp show` lists their metrics."""
    import time
    if not sh("dvc status", project).stdout.strip().endswith("up to date."):
        sh("dvc repro && git add -A && git commit -qm sync", project)
    for beta in (0.3, 0.9):
        sh(f"dvc exp run --queue -n beta-{str(beta).replace('.', '_')} -S loss.beta={beta}", project)
    sh("dvc queue start -j 2", project)
    deadline = time.monotonic() + 600
    while True:
        status = sh("dvc queue status", project).stdout
        if not re.search(r"Queued|Running", status) or time.monotonic() > deadline:
            break
        time.sleep(3)
    sh("dvc queue stop", project, check=False)
    assert status.count("Success") == 2, status
    for name in ("beta-0_3", "beta-0_9"):
        logs = sh(f"dvc queue logs {name}", project).stdout
        stages = ran(logs)
        assert {"finetune@headline-s0", "evaluate@headline-s0", "adaptive@headline-s0", "report"} <= stages, logs[-2000:]
        assert not stages & {"prepare", "train@core", "train@base", "finetune@era-1", "evaluate@era-1",
                             "synthetic", "train@noise_base", "certify@cra-4-0"}
    show = json.loads(sh("dvc exp show --json", project).stdout)
    betas = {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["loss"]["beta"]
             for baseline in show for exp in (baseline.get("experiments") or []) for rev in exp["revs"]}
    assert betas == {"beta-0_3": 0.3, "beta-0_9": 0.9}
    metrics = [rev["data"]["metrics"]["reports/metrics.json"]["data"]
               for baseline in show for exp in (baseline.get("experiments") or []) for rev in exp["revs"]]
    assert len(metrics) == 2 and all(0 <= m["headline/rob_acc"] <= 1 for m in metrics)


def stage(project, *args, check=False):
    return sh(" ".join([sys.executable, *args]), project, check=check)


@pytest.mark.parametrize("section,key,value,msg", [
    ("finetune", "loss.eps", -0.1, "finetune.loss.eps must be >= 0"),
    ("finetune", "train.lr", "fast", "finetune.train.lr must be a number"),
    ("finetune", "train.epochs", 0, "finetune.train.epochs must be >= 1"),
    ("loss", "name", "nope", "finetune.loss.name must be one of"),
    ("loss", "beta", -2, "finetune.loss.beta must be >= 0"),
])
def test_bad_params_give_one_clear_error_and_no_output(project, section, key, value, msg):
    p = yaml.safe_load((project / "params.yaml").read_text())
    d = p[section]
    *path, last = key.split(".")
    for k in path:
        d = d[k]
    d[last] = value
    bad = project / "bad_params"
    bad.mkdir(exist_ok=True)
    (project / "params.yaml").rename(project / "params.good.yaml")
    try:
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        out = project / "models/bad.pt"
        r = stage(project, "stages/finetune.py", "--loss", "loss", "--init", "models/base.pt",
                  "--out", str(out))
    finally:
        (project / "params.good.yaml").replace(project / "params.yaml")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().startswith("error:") and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_unknown_dataset_and_missing_data(project, tmp_path):
    p = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").rename(project / "params.good.yaml")
    try:
        p["data"]["dataset"] = "imagenet"
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        r = stage(project, "stages/prepare.py", "--out", str(tmp_path / "x.pt"))
        assert r.returncode == 1 and "data.dataset must be one of" in r.stderr and "'imagenet'" in r.stderr
        p["data"]["dataset"] = "fashion_mnist"
        p["data"]["fashion_mnist"]["root"] = str(tmp_path / "nowhere")
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        r = stage(project, "stages/prepare.py", "--out", str(tmp_path / "x.pt"))
    finally:
        (project / "params.good.yaml").replace(project / "params.yaml")
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        assert r.returncode == 0  # falls back to Debian's copy
    else:
        assert r.returncode == 1 and "nowhere" in r.stderr and "dataset-fashion-mnist" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_checkpoint_is_a_clear_error(project, tmp_path):
    html = tmp_path / "model.pt"
    html.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    out = tmp_path / "rec.csv"
    r = stage(project, "stages/evaluate.py", "--model", str(html), "--out", str(out))
    assert r.returncode == 1 and "HTML page" in r.stderr and str(html) in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01not a zip")
    r = stage(project, "stages/evaluate.py", "--model", str(junk), "--out", str(out))
    assert r.returncode == 1 and "cannot be loaded" in r.stderr
    assert not out.exists() and "Traceback" not in r.stderr
