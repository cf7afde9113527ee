"""The report writes every table and figure from records, and returns flat rounded metrics."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robust_abstain.errors import ParamError
from robust_abstain.report import ModelInfo, build_report, model_metrics
from robust_abstain.report import tables

N = 200
TAUS = np.round(np.arange(0, 100, 10) / 100, 2)


def _labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, N)


def empirical(acc: float, r1: float, r2: float, seed: int) -> pd.DataFrame:
    g, y = np.random.default_rng(seed), _labels()
    pred = np.where(g.random(N) < acc, y, (y + 1) % 10)
    conf = g.uniform(0.3, 1.0, N)
    rob1 = g.random(N) < r1
    rob2 = rob1 & (g.random(N) < r2)
    sr_ok = rob2 & (g.random(N) < 0.9)
    return pd.DataFrame({
        "index": np.arange(N), "label": y, "pred": pred, "conf": conf, "eps": 0.05,
        "adv_pred_1x": np.where(rob1, pred, (pred + 2) % 10),
        "adv_pred_2x": np.where(rob2, pred, (pred + 3) % 10),
        "sr_pred_1x": np.where(rob1, pred, (pred + 1) % 10), "sr_conf_1x": conf * 0.95,
        "sr_pred_2x": np.where(sr_ok, pred, (pred + 1) % 10), "sr_conf_2x": conf * 0.9})


def certified(seed: int) -> pd.DataFrame:
    g, y = np.random.default_rng(seed), _labels()
    cp = np.where(g.random(N) < 0.7, y, np.where(g.random(N) < 0.5, -1, (y + 1) % 10))
    return pd.DataFrame({"index": np.arange(N), "label": y, "pred": y, "conf": 0.9,
                         "smooth_pred": cp, "cert_pred": cp,
                         "cert_radius": np.where(cp == -1, 0.0, g.exponential(0.3, N))})


def zoo() -> list[ModelInfo]:
    models = [ModelInfo("core", "std", None, "core", empirical(0.9, 0.2, 0.5, 1)),
              ModelInfo("base", "trades", None, "base", empirical(0.8, 0.8, 0.6, 2))]
    for i, b in enumerate([0.5, 1.0]):
        models.append(ModelInfo(f"trades-{b}", "trades", b, "sweep", empirical(0.78, 0.8, 0.6, 10 + i)))
        models.append(ModelInfo(f"era-{b}", "era", b, "headline" if b == 0.5 else "sweep",
                                empirical(0.77, 0.75, 0.5, 20 + i)))
    return models


def test_build_report_writes_all_files_and_valid_pngs(tmp_path):
    cert = [ModelInfo("noise", "noise", None, "base", certified(5)),
            ModelInfo("cra", "cra", 1.0, "headline", certified(6))]
    adv = pd.DataFrame({"index": np.arange(N),
                        "h_adv_wrong": np.random.default_rng(3).random(N) < 0.1})
    m = build_report(zoo(), tmp_path, 0.05, certified=cert, adaptive={"era-0.5": adv},
                     cert_eps=0.25, taus=TAUS)
    md = {"summary.md", "splits.md", "abstain.md", "compositions.md", "adaptive.md", "certified.md"}
    png = {"rob_acc_vs_rob_inacc.png", "selection_pareto.png", "compositions.png",
           "certified_accuracy.png"}
    assert {p.name for p in tmp_path.glob("*.md")} == md
    assert {p.name for p in (tmp_path / "figures").glob("*.png")} == png
    for name in png:
        with Image.open(tmp_path / "figures" / name) as im:
            im.verify()
        with Image.open(tmp_path / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
            assert not any("date" in k.lower() or "time" in k.lower() for k in im.info)
    for key in ["n", "core/nat_acc", "core/rob_acc", "headline/rob_acc", "headline/rob_inacc",
                "headline/rob_sel", "headline/rob_acc_on_sel", "headline_composition/rob_acc",
                "best_composition/nat_acc", "best_composition/rob_acc",
                "best_composition/rob_acc_conservative", "best_cascade/rob_acc",
                "best_cascade/beats_single", "adaptive/era-0.5/rob_acc_adaptive",
                "adaptive/era-0.5/gap", "certified/cra/rob_sel_sound",
                "certified/noise/rob_acc_on_sel_paper", "base/rob_inacc_2x"]:
        assert key in m, key
    for k, v in m.items():
        assert isinstance(v, (int, float)) and not isinstance(v, bool), k
        if isinstance(v, float):
            assert round(v, 4) == v, k
    assert m["n"] == N
    assert m["adaptive/era-0.5/gap"] >= 0
    # the paper's rule can only over-count against the conservative rule
    assert m["best_composition/rob_acc_conservative"] <= m["best_composition/rob_acc"]
    text = (tmp_path / "certified.md").read_text()
    assert "[sound]" in text and "[paper]" in text
    assert "Table 1/5 analog" in (tmp_path / "compositions.md").read_text()


def test_report_is_deterministic_and_works_without_optional_inputs(tmp_path):
    models = zoo()
    m1 = build_report(models, tmp_path / "a", 0.05, taus=TAUS)
    m2 = build_report(models, tmp_path / "b", 0.05, taus=TAUS)
    assert m1 == m2
    for p in (tmp_path / "a").rglob("*.*"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p.name
    assert not (tmp_path / "a" / "certified.md").exists()
    assert not (tmp_path / "a" / "adaptive.md").exists()
    # no core model: no compositions, the per-model tables still come
    no_core = [x for x in models if x.role != "core"]
    m3 = build_report(no_core, tmp_path / "c", 0.05, taus=TAUS)
    assert (tmp_path / "c" / "summary.md").exists()
    assert not (tmp_path / "c" / "compositions.md").exists()
    assert "best_composition/rob_acc" not in m3 and "headline/rob_acc" in m3


def test_build_report_rejects_bad_inputs(tmp_path):
    models = zoo()
    with pytest.raises(ParamError):
        ModelInfo("x", "era", 1.0, "champion", models[0].records)
    two_cores = models + [ModelInfo("core2", "std", None, "core", models[0].records)]
    with pytest.raises(ParamError, match="at most one"):
        build_report(two_cores, tmp_path, 0.05)
    with pytest.raises(ParamError, match="unique"):
        build_report(models + [models[1]], tmp_path, 0.05)
    with pytest.raises(ParamError, match="core"):
        build_report(models[1:], tmp_path, 0.05,
                     adaptive={"era-0.5": pd.DataFrame({"index": [], "h_adv_wrong": []})})


def test_markdown_tables():
    assert tables.pct(0.7234) == "72.3" and tables.pct(float("nan")) == "–"
    assert tables.pp(0.031) == "+3.1" and tables.pp(-0.0001) == "+0.0"
    md = tables.markdown(["a", "b"], [["x", "1.0"], ["yy|z", "10.5"]])
    lines = md.strip().split("\n")
    assert lines[0].startswith("| a") and lines[1].endswith("-: |")
    assert "yy\\|z" in lines[3] and len({len(l) for l in lines}) == 1
    mdf = model_metrics(zoo()[:2])
    out = tables.summary_table(mdf)
    assert "| core" in out and "R_rob^-acc (2ε)" in out
