"""dvc.yaml and dvc.lock stay honest: every stage lists the package code it runs (so a code change
re-runs it), and dvc.lock holds no entry of a stage that no longer exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from robust_abstain.dag import pipeline_section

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "robust_abstain"
#: infrastructure that does not compute a stage's numbers (error types, params reading and the
#: pipeline section, atomic file writing, optional-package shims, dvclive logging); and data/, whose
#: loading code is reached
#: through data/prepared.pt, itself a dependency (the synthetic stage lists data/synthetic.py).
#: Everything else a stage imports must be one of its deps; the package's __init__.py (CPU kernel
#: pinning) and stage.py (thread count) change numbers, so every stage lists them.
NOT_DEPS = {"errors.py", "params.py", "dag.py", "io.py", "compat.py", "live.py"}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "robust_abstain":
        return None
    base = PKG.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[Path]:
    """Package files imported by ``path`` (absolute and relative imports, one level)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(["robust_abstain"] + list(path.relative_to(PKG).parts[:-1])) if PKG in path.parents \
        else "robust_abstain"
    out: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for n in names:
            f = _module_file(n)
            if f is not None:
                out.add(f)
    return out


def _closure(script: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for f in _imports(todo.pop()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def _stage_bodies() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def test_every_stage_depends_on_the_package_code_it_imports():
    missing = {}
    for name, body in _stage_bodies().items():
        m = re.search(r"python (stages/\w+\.py)", body["cmd"])
        if not m:
            continue
        deps = [str(d) for d in body.get("deps", [])]
        for f in sorted(_closure(ROOT / m.group(1))):
            rel = str(f.relative_to(ROOT))
            if (f.name in NOT_DEPS and f.parent == PKG) or f.parent == PKG / "data" \
                    or (f.name == "__init__.py" and f.parent != PKG):
                continue
            if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
                missing.setdefault(name, []).append(rel)
    assert not missing, f"stages miss code deps: {missing}"


def test_every_python_stage_depends_on_the_cpu_pinning():
    """__init__.py pins the CPU kernels and stage.py the thread count: both change numbers."""
    for name, body in _stage_bodies().items():
        if "python stages/" in body["cmd"]:
            deps = [str(d) for d in body.get("deps", [])]
            assert {"src/robust_abstain/__init__.py", "src/robust_abstain/stage.py"} <= set(deps), name


def _param(params: dict, ref: str):
    """The value of ``${a.b.c}`` in ``params``."""
    v = params
    for part in ref.strip("${}").split("."):
        v = v[part]
    return v


@pytest.mark.parametrize("profile", ["params.yaml", "params-paper.yaml", "params-full.yaml"])
def test_each_profile_lists_the_models_its_sweeps_and_seeds_imply(profile):
    """dvc.yaml's stages run over the ``pipeline`` section; it must be what ``sweep``, ``seeds`` and
    ``cert_sweep`` imply (``python scripts/sync_pipeline.py`` writes it)."""
    params = yaml.safe_load((ROOT / profile).read_text())
    assert params["pipeline"] == pipeline_section(params), f"run: python scripts/sync_pipeline.py {profile}"


def test_sync_pipeline_rewrites_only_the_pipeline_section(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    path.write_text(text.replace("seeds: [0] ", "seeds: [0, 1]"))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_pipeline.py"), str(path)], check=True)
    params = yaml.safe_load(path.read_text())
    assert set(params["pipeline"]["finetune"]) >= {"headline-s0", "headline-s1"}
    assert params["pipeline"]["adaptive"]["headline-s1"] == {"model": "models/finetune/headline/s1.pt",
                                                             "records": "headline/s1"}
    before, after = text.split("\npipeline:")[0], path.read_text().split("\npipeline:")[0]
    assert after == before.replace("seeds: [0] ", "seeds: [0, 1]")


def test_dvc_lock_holds_only_stages_of_dvc_yaml():
    """Stage names in dvc.lock (``name@key``) belong to a stage group of dvc.yaml with that key."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]

    def keys(body: dict) -> set[str] | None:
        if "foreach" in body:
            fe = body["foreach"]
            if isinstance(fe, str):
                fe = _param(params, fe)
            return {str(k) for k in fe}
        if "matrix" in body:
            axes = []
            for v in body["matrix"].values():
                if isinstance(v, str):
                    v = _param(params, v)
                axes.append([str(k) for k in v])
            out = {""}
            for ax in axes:
                out = {f"{o}-{a}" if o else a for o in out for a in ax}
            return out
        return None

    expected = set()
    for name, body in stages.items():
        ks = keys(body)
        expected |= {name} if ks is None else {f"{name}@{k}" for k in ks}
    stale = sorted(set(lock) - expected)
    assert not stale, f"dvc.lock holds stages dvc.yaml no longer defines: {stale}"
