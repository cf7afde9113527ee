"""The report writes every table and figure from records, makes every choice on validation records,
reports it on test records with 95 % intervals, and returns flat rounded metrics."""

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import beta as beta_dist

from robust_abstain.errors import DataError, ParamError
from robust_abstain.report import ModelInfo, build_report, metrics_json, model_metrics
from robust_abstain.report import tables

N = 200
TAUS = np.round(np.arange(0, 100, 10) / 100, 2)
CI = re.compile(r"\d+\.\d \[\d+\.\d, \d+\.\d\]")          # "72.3 [69.5, 75.0]"
DCI = re.compile(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]")  # "+3.1 [+1.0, +5.2]"


def _labels(split: str = "test") -> np.ndarray:
    return np.random.default_rng(0 if split == "test" else 1).integers(0, 10, N)


def empirical(acc: float, r1: float, r2: float, seed: int, split: str = "test") -> pd.DataFrame:
    g, y = np.random.default_rng(seed), _labels(split)
    pred = np.where(g.random(N) < acc, y, (y + 1) % 10)
    conf = g.uniform(0.3, 1.0, N)
    rob1 = g.random(N) < r1
    rob2 = rob1 & (g.random(N) < r2)
    sr_ok = rob2 & (g.random(N) < 0.9)
    return pd.DataFrame({
        "index": np.arange(N), "label": y, "pred": pred, "conf": conf, "eps": 0.05,
        "adv_pred_1x": np.where(rob1, pred, (pred + 2) % 10),
        "adv_conf_1x": np.where(rob1, conf * 0.97, conf * 0.3),
        "adv_pred_2x": np.where(rob2, pred, (pred + 3) % 10),
        "adv_conf_2x": np.where(rob1, conf * 0.93, np.nan),   # 2 eps run only where eps survived
        "sr_pred_1x": pred, "sr_conf_1x": conf * 0.95,
        "sr_pred_2x": np.where(sr_ok | ~rob2, pred, (pred + 1) % 10), "sr_conf_2x": conf * 0.9})


def certified(seed: int) -> pd.DataFrame:
    g, y = np.random.default_rng(seed), _labels()
    cp = np.where(g.random(N) < 0.7, y, np.where(g.random(N) < 0.5, -1, (y + 1) % 10))
    return pd.DataFrame({"index": np.arange(N), "label": y, "pred": y, "conf": 0.9,
                         "smooth_pred": cp, "cert_pred": cp,
                         "cert_radius": np.where(cp == -1, 0.0, g.exponential(0.3, N))})


def _model(name, loss, beta, role, acc, r1, r2, seed) -> ModelInfo:
    """Test records from ``seed``, validation records (other points) from ``seed + 100``."""
    return ModelInfo(name, loss, beta, role, empirical(acc, r1, r2, seed),
                     empirical(acc, r1, r2, seed + 100, "val"))


def zoo() -> list[ModelInfo]:
    models = [_model("core", "std", None, "core", 0.9, 0.2, 0.5, 1),
              _model("base", "trades", None, "base", 0.8, 0.8, 0.6, 2)]
    for i, b in enumerate([0.5, 1.0]):
        models.append(_model(f"trades-{b}", "trades", b, "sweep", 0.78, 0.8, 0.6, 10 + i))
        models.append(_model(f"era-{b}", "era", b, "headline" if b == 0.5 else "sweep",
                             0.77, 0.75, 0.5, 20 + i))
    return models


def adaptive_frame(seed: int) -> pd.DataFrame:
    """Adaptive records of one model: every test point for S_ERI and for S_SR at every tau of TAUS
    (the report picks the rows of the selectors it composes)."""
    g = np.random.default_rng(seed)
    frames = [pd.DataFrame({"index": np.arange(N), "selector": name,
                            "h_adv_wrong": g.random(N) < 0.1, "h_adv_pred": 0})
              for name in ["ERI"] + [f"SR@{t:.2f}" for t in TAUS]]
    return pd.concat(frames, ignore_index=True)


def test_build_report_writes_all_files_and_valid_pngs(tmp_path):
    cert = [ModelInfo("noise", "noise", None, "sweep", certified(5)),
            ModelInfo("cra", "cra", 1.0, "headline", certified(6))]
    m = build_report(zoo(), tmp_path, 0.05, certified=cert, adaptive={"era-0.5": adaptive_frame(3)},
                     cert_eps=0.25, certified_core=empirical(0.9, 0.3, 0.5, 7), taus=TAUS)
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
                "best_composition/rob_acc_sound", "best_composition/rob_acc_rule",
                "best_composition/feasible", "best_cascade/length", "best_cascade/rob_acc",
                "best_cascade/gain", "adaptive/era-0.5+ERI/rob_acc_rule",
                "adaptive/era-0.5+ERI/rob_acc_sound", "adaptive/era-0.5+ERI/rob_acc_adaptive",
                "adaptive/era-0.5+ERI/rob_acc", "certified/cra/rob_sel_sound",
                "certified/noise/rob_sel_paper", "certified/cra-noise/d_rob_acc_r1",
                "certified/cra/composition/rob_acc", "base/rob_inacc_2x",
                "vs_trades/era-0.5/d_rob_inacc_1x"]:
        assert key in m, key
    assert not any(k.endswith("rob_acc_conservative") for k in m)
    for k, v in m.items():
        if v is None:    # NaN -> null: only the adaptive score of a composition never attacked
            assert k.endswith("/rob_acc_adaptive") and not k.startswith("adaptive/"), k
            continue
        assert isinstance(v, (int, float)) and not isinstance(v, bool), k
        if isinstance(v, float):
            assert round(v, 4) == v, k
    assert m["n"] == N
    assert m["headline_composition/rob_acc_adaptive"] is not None    # era-0.5+ERI was attacked
    # headline = sound AND not fooled <= sound <= the paper's rule; headline <= adaptive
    for name in [k.split("/")[1] for k in m if k.startswith("adaptive/") and k.endswith("/rob_acc")]:
        p = f"adaptive/{name}/"
        assert m[p + "rob_acc"] <= m[p + "rob_acc_sound"] <= m[p + "rob_acc_rule"], name
        assert m[p + "rob_acc"] <= m[p + "rob_acc_adaptive"], name
    assert any(k.startswith("adaptive/era-0.5+SR@") for k in m)    # every composed selector
    assert m["best_composition/rob_acc_sound"] <= m["best_composition/rob_acc_rule"]
    text = (tmp_path / "certified.md").read_text()
    assert "[sound]" in text and "[paper]" in text and "Compositions with the core model" in text
    assert "Table 1/5 analog" in (tmp_path / "compositions.md").read_text()


def test_report_is_deterministic_and_works_without_optional_inputs(tmp_path):
    models = zoo()[:3]     # core, base, trades-0.5: every file of the report, in half the time
    m1 = build_report(models, tmp_path / "a", 0.05, taus=TAUS)
    m2 = build_report(models, tmp_path / "b", 0.05, taus=TAUS)
    assert m1 == m2
    for p in (tmp_path / "a").rglob("*.*"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p.name
    assert not (tmp_path / "a" / "certified.md").exists()
    assert not (tmp_path / "a" / "adaptive.md").exists()
    assert (tmp_path / "a" / "compositions.md").exists()


def test_report_without_a_core_model_has_no_compositions(tmp_path):
    no_core = [x for x in zoo() if x.role != "core"]
    m3 = build_report(no_core, tmp_path / "c", 0.05, taus=TAUS[:2])
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
    core_no_val = [ModelInfo("core", "std", None, "core", models[0].records)] + models[1:]
    with pytest.raises(DataError, match="validation"):
        build_report(core_no_val, tmp_path, 0.05, taus=TAUS)


# ---------------------------------------------------------------------------------- item 7
# 20 hand-made points per split, labels 0..9 twice; masks by point number.
P = 20


def _mask(*ranges: range) -> np.ndarray:
    m = np.zeros(P, dtype=bool)
    for r in ranges:
        m[list(r)] = True
    return m


def rec(rob1: np.ndarray, rob2: np.ndarray, wrong: np.ndarray | None = None,
        conf: np.ndarray | float = 0.9, sr: bool = False) -> pd.DataFrame:
    """Records of 20 points: F wrong on ``wrong``, robust at eps on ``rob1`` and at 2 eps on
    ``rob1 & rob2`` (by every attack). ``sr``: APGD-conf was run and every attack's confidence is
    ``conf`` (so the worst confidence is ``conf``); else APGD-conf was not run (-1, NaN)."""
    y = np.arange(P) % 10
    wrong = _mask() if wrong is None else wrong
    pred = np.where(wrong, (y + 1) % 10, y)
    conf = np.broadcast_to(np.asarray(conf, float), (P,))
    rob2 = rob1 & rob2
    adv1, adv2 = np.where(rob1, pred, (pred + 2) % 10), np.where(rob2, pred, (pred + 3) % 10)
    return pd.DataFrame({"index": np.arange(P), "label": y, "pred": pred, "conf": conf, "eps": 0.1,
                         "adv_pred_1x": adv1, "adv_conf_1x": conf, "adv_pred_2x": adv2,
                         "adv_conf_2x": conf, "sr_pred_1x": adv1 if sr else -1,
                         "sr_conf_1x": conf if sr else np.nan, "sr_pred_2x": adv2 if sr else -1,
                         "sr_conf_2x": conf if sr else np.nan})


NONE, ALL = _mask(), _mask(range(P))


def val_vs_test_zoo(core_val_wrong_19: bool) -> list[ModelInfo]:
    """ERI only (no APGD-conf). Core: accurate, never robust (test); on validation also wrong at
    point 19 when ``core_val_wrong_19``.
    A (ERA, headline): test robust at 2 eps on 0..9; val robust at 2 eps on 0, 1, at eps only on 2..4.
    B (TRADES, base):  test robust at 2 eps on 0..4; val robust at 2 eps on 2..4 and 19, wrong at 19.
    Sound R_rob^acc (the core adds nothing, never robust):
        test: A+ERI 10/20, B+ERI 5/20;  val: A+ERI 2/20, B+ERI 3/20 (19: H wrong).
    Natural accuracy on val: A+ERI = core; B+ERI loses point 19 unless the core is wrong there too."""
    core_val = rec(NONE, NONE, wrong=_mask(range(19, 20)) if core_val_wrong_19 else NONE)
    return [ModelInfo("core", "std", None, "core", rec(NONE, NONE), core_val),
            ModelInfo("A", "era", 1.0, "headline", rec(_mask(range(10)), ALL),
                      rec(_mask(range(5)), _mask(range(2)))),
            ModelInfo("B", "trades", None, "base", rec(_mask(range(5)), ALL),
                      rec(_mask(range(2, 5), range(19, 20)), ALL, wrong=_mask(range(19, 20))))]


def test_best_composition_and_cascade_are_chosen_on_validation_and_scored_on_test(tmp_path):
    """Item 7. On test A+ERI (10/20) beats B+ERI (5/20); on validation B+ERI (3/20) beats A+ERI
    (2/20), so the report's best composition is B+ERI, scored on test: 5/20 = 25 %.
    Cascade, greedy on val from B+ERI along the front {A (R_rob^sel 2/20, on sel. 1), B (4/20,
    3/4)}: A -> B scores 0, 1 (A) and 2..4 (B robustly, A racc at eps there) = 5/20 > 3/20
    (B -> A scores 2..4 only: B is not robust at 0, 1). On test A -> B = A+ERI's 10/20; gain over
    the val-chosen single 10/20 - 5/20."""
    m = build_report(val_vs_test_zoo(True), tmp_path, 0.1, taus=np.array([0.5]))
    assert m["best_composition/rob_acc"] == pytest.approx(0.25)
    assert m["best_composition/rob_acc_rule"] == pytest.approx(0.25)
    assert m["best_composition/nat_acc"] == pytest.approx(1.0)
    assert m["best_composition/d_rob_acc"] == pytest.approx(0.25) and m["best_composition/feasible"] == 1
    assert m["headline_composition/rob_acc"] == pytest.approx(0.5)      # A+ERI on test
    assert m["best_cascade/length"] == 2
    assert m["best_cascade/rob_acc"] == pytest.approx(0.5)
    assert m["best_cascade/gain"] == pytest.approx(0.25)
    text = (tmp_path / "compositions.md").read_text()
    assert "B+ERI (best on val)" in text and "A+ERI (best on val" not in text
    assert "A+ERI → B+ERI" in text
    assert "validation" in text and "max_nat_drop" in text


@pytest.mark.parametrize("max_nat_drop, best, rob_acc", [(0.01, "A+ERI", 0.5), (0.1, "B+ERI", 0.25)])
def test_max_nat_drop_is_a_param_that_changes_the_best_composition(tmp_path, max_nat_drop, best,
                                                                   rob_acc):
    """Item 7: the core is right at validation point 19, so B+ERI (wrong there) loses 1/20 = 5
    points of R_nat on val: infeasible at max_nat_drop = 0.01 (best: A+ERI, 2/20 on val, 10/20 on
    test), feasible at 0.1 (best: B+ERI, 3/20 on val, 5/20 on test)."""
    m = build_report(val_vs_test_zoo(False), tmp_path, 0.1, taus=np.array([0.5]),
                     max_nat_drop=max_nat_drop)
    assert m["best_composition/rob_acc"] == pytest.approx(rob_acc)
    assert m["best_composition/feasible"] == 1
    text = (tmp_path / "compositions.md").read_text()
    assert f"{best} (best on val)" in text
    assert f"at most {100 * max_nat_drop:g} points of R_nat" in text


def test_softmax_response_tau_is_chosen_on_validation(tmp_path):
    """Item 7, tau in {0.5, 0.8}. A robust at 2 eps everywhere (every attack), worst confidence =
    conf. Val: conf 0.9 on 0..3 (right), 0.6 on 4..9 (wrong), 0.3 on 10..19 (right); the core is
    right everywhere, never robust. SR@0.5 selects 4..9 (loses 6 points of R_nat: infeasible), as
    does ERI (selects all); SR@0.8 (4/20, no loss) is chosen, and is the best composition.
    Test: A right everywhere, conf 0.9 on 0..3, 0.6 on 4..19: SR@0.5 would score 20/20; the
    chosen SR@0.8 scores 4/20 = 20 %."""
    conf_val = np.r_[np.full(4, 0.9), np.full(6, 0.6), np.full(10, 0.3)]
    conf_test = np.r_[np.full(4, 0.9), np.full(16, 0.6)]
    models = [ModelInfo("core", "std", None, "core", rec(NONE, NONE), rec(NONE, NONE)),
              ModelInfo("A", "era", 1.0, "headline", rec(ALL, ALL, conf=conf_test, sr=True),
                        rec(ALL, ALL, wrong=_mask(range(4, 10)), conf=conf_val, sr=True))]
    m = build_report(models, tmp_path, 0.1, taus=np.array([0.5, 0.8]))
    text = (tmp_path / "compositions.md").read_text()
    assert "A+SR@0.80" in text and "A+SR@0.50" not in text
    assert "A+SR@0.80 (best on val)" in text
    assert m["best_composition/rob_acc"] == pytest.approx(0.2)
    assert m["best_composition/nat_acc"] == pytest.approx(1.0)
    assert m["headline_composition/rob_acc"] == pytest.approx(1.0)     # A+ERI on test


# ---------------------------------------------------------------------------------- item 8
def test_report_shows_exact_intervals_and_paired_differences(tmp_path):
    """Item 8 on the val-vs-test zoo (20 test points). Core R_nat = 20/20: Clopper-Pearson
    [0.025^(1/20), 1] = [83.2, 100.0]. Best composition B+ERI, sound R_rob^acc 5/20: [Beta(0.025;
    5, 16), Beta(0.975; 6, 15)] = [8.7, 49.1]; its change against the core (never robust) +25.0 with
    a paired bootstrap interval inside [0, 1]."""
    m = build_report(val_vs_test_zoo(True), tmp_path, 0.1, taus=np.array([0.5]))
    lo, hi = beta_dist.ppf(0.025, 5, 16), beta_dist.ppf(0.975, 6, 15)
    assert m["core/nat_acc_lo"] == pytest.approx(round(0.025 ** (1 / 20), 4))
    assert m["core/nat_acc_hi"] == 1.0
    assert m["best_composition/rob_acc_lo"] == pytest.approx(round(lo, 4))
    assert m["best_composition/rob_acc_hi"] == pytest.approx(round(hi, 4))
    for k in ("core/nat_acc", "core/rob_acc", "headline/rob_acc", "headline/rob_inacc_2x",
              "best_composition/nat_acc", "best_composition/rob_acc", "best_composition/d_rob_acc",
              "best_composition/d_nat_acc", "headline_composition/rob_acc", "best_cascade/rob_acc",
              "best_cascade/gain"):
        assert m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"], k
    # B is the TRADES *base*, not a TRADES fine-tune of the same budget: no matched pair
    assert not any(k.startswith("vs_trades/") for k in m)
    assert 0.0 <= m["best_composition/d_rob_acc_lo"] < 0.25 < m["best_composition/d_rob_acc_hi"]
    summary = (tmp_path / "summary.md").read_text()
    assert "100.0 [83.2, 100.0]" in summary
    assert CI.search(summary)
    comp = (tmp_path / "compositions.md").read_text()
    assert f"25.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in comp
    assert "+25.0 [" in comp and DCI.search(comp)


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


def test_metrics_json_appends_figure_1_rates_rounded():
    m = metrics_json({"n": 20, "core/nat_acc": 0.9},
                     {"test": {"ERA": {"nat_acc": 0.123456, "rob_acc": 0.5}}, "train": {"TRADES": {"rob_inacc": 0.1}}})
    assert list(m.items()) == [("n", 20), ("core/nat_acc", 0.9), ("synthetic/test/ERA/nat_acc", 0.1235),
                               ("synthetic/test/ERA/rob_acc", 0.5), ("synthetic/train/TRADES/rob_inacc", 0.1)]
