"""Issue 10: the default params on a small image-folder dataset (10 classes, 16x16, a few hundred
training images). The training budget is in optimiser steps, so it follows the data; an ERA
fine-tune of an under-trained robust base that loses validation accuracy is never selected
(``finetune.train.max_nat_drop``). Selection then keeps the base's weights exactly and says so.
The report warns of any fine-tune that loses accuracy against the base (``claims.accuracy_warnings``).

Uses the real ``core``, ``base`` and ``finetune`` sections of params.yaml. The only changes are
smaller step budgets, so the module runs in about 25 s on one CPU thread. They are set in
:func:`run` and explained there."""
import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from robust_abstain.training import loop as train_mod
from robust_abstain.data import prepare
from robust_abstain.models.checkpoint import load_model
from robust_abstain.params import load_params
from robust_abstain.training import train_model
from robust_abstain.report.build import ModelInfo
from robust_abstain.report.claims import accuracy_warnings
from robust_abstain.training import WARN_NAT_DROP

ROOT = Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS_TRAIN, PER_CLASS_TEST, SIZE = 10, 40, 10, 16
BASE_STEPS = 8  # two passes over the 320 training images: an under-trained robust base
BETAS = {"era-0_25": 0.25, "era-1": 1.0}  # out stem (the runs' log prefix) -> ERA beta


def write_image_folder(root: Path, seed: int = 0) -> None:
    """root/{train,test}/c<k>/<i>.png: class k is a fixed random 4x4 pattern of 0/1 colour
    channels, scaled up to 16x16 blocks, shifted by up to 2 pixels, plus Gaussian noise (std 0.9)
    and clipped to [0, 1]. A small CNN learns it within a few hundred steps. A robust model
    trained for two passes over it (8 steps) has not learnt it yet."""
    rng = np.random.default_rng(seed)
    protos = (rng.uniform(0, 1, (CLASSES, 4, 4, 3)) > 0.5).astype(float)
    for split, n in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
        for c in range(CLASSES):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.kron(protos[c], np.ones((4, 4, 1))) + rng.normal(0, 0.9, (SIZE, SIZE, 3))
                img = np.roll(img, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
                Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(d / f"{i}.png")


def with_steps(section: dict, steps: int, **train) -> dict:
    return {**section, "train": {**section["train"], "steps": steps, **train}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Prepare the folder and train the core, the under-trained base, the base on 250 points,
    and the two ERA fine-tunes. Each run's history, printed output and counted optimiser steps are
    kept."""
    tmp = tmp_path_factory.mktemp("image_folder_run")
    write_image_folder(tmp / "images")
    data = prepare("image_folder", {"root": str(tmp / "images"), "size": SIZE, "val_fraction": 0.2}, seed=0)
    params = load_params(ROOT / "params.yaml")
    # The budgets are capped only so the module finishes in seconds.
    # * core: params.yaml's budget is far more than this data needs; 150 steps reach ~99 % val acc.
    # * base: BASE_STEPS, deliberately few. A barely trained, under-confident robust base is the
    #   issue's scenario: ERA fine-tuning from it (34 % val acc) first falls to chance (~10-20 %).
    #   With params.yaml's base lr (3e-3), 20 steps already reach ~84 % here, and ERA then only gains.
    # * finetune: 120 steps (30 epochs) instead of 400. At beta 0.25 ERA has not recovered after
    #   120 steps, so the guard refuses every epoch (the fallback); at beta 1 it recovers.
    # If the scenario tests fail after a params.yaml change, check whether the scenario (a collapse)
    # still happens before suspecting the guard.
    # lr, batch size, select, max_nat_drop and the losses are params.yaml's.
    sections = {"core": with_steps(params["core"], 150), "base": with_steps(params["base"], BASE_STEPS),
                "base_small": with_steps(params["base"], BASE_STEPS, n_train=250),
                "finetune": with_steps(params["finetune"], 120)}
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("RA_THREADS", threads)))
    steps: list[int] = []
    real_step = train_mod.batch_step

    def counted_step(*a, **k):
        steps.append(1)
        return real_step(*a, **k)

    def train(name: str, section: str, **kw) -> dict:
        steps.clear()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            hist = train_model(sections[section], data, tmp / f"{name}.pt", tmp / "state", section, **kw)
        return {"history": hist, "out": out.getvalue(), "steps": len(steps), "path": tmp / f"{name}.pt",
                "section": sections[section]}

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_mod, "batch_step", counted_step)
            runs = {"core": train("core", "core"), "base": train("base", "base"),
                    "base_small": train("base_small", "base_small")}
            for name, beta in BETAS.items():
                runs[name] = train(name, "finetune", init=runs["base"]["path"],
                                   loss_override={"name": "era", "beta": beta})
    finally:
        torch.set_num_threads(threads)
    return data, runs


def selected(history: list[dict]) -> dict:
    chosen = [h for h in history if h["selected"] == 1.0]
    assert len(chosen) == 1 and all(h["selected"] == 0.0 for h in history if h is not chosen[0])
    return chosen[0]


def score(h: dict, select: str) -> float:
    """The ranking of train._score: higher is better."""
    return {"last": h["epoch"], "val_loss": -h["val_loss"]}.get(select, h.get(select))


def test_the_budget_is_the_same_number_of_steps_whatever_the_data_size(run):
    data, runs = run
    # 400 training images, 20 % validation: 320 train points; batch 100 gives ceil(320 / 100) = 4
    # batches an epoch. Core: 150 steps = 37 epochs + 2 batches of a 38th. Base: 8 steps = 2
    # epochs. On 250 points (3 batches an epoch) the same 8 steps are 3 epochs, the third 2 batches.
    assert len(data.y_train) == 320 and len(data.y_val) == 80
    for name, r in runs.items():
        cfg = r["section"]["train"]
        n = min(cfg.get("n_train") or len(data.y_train), len(data.y_train))
        assert r["steps"] == cfg["steps"], name
        assert len(r["history"]) - 1 == math.ceil(cfg["steps"] / math.ceil(n / cfg["batch_size"])), name
        assert [h["epoch"] for h in r["history"]] == list(range(len(r["history"]))), name
    assert [len(runs[k]["history"]) - 1 for k in ("core", "base", "base_small")] == [38, 2, 3]


def test_the_data_is_learnable_and_the_base_is_under_trained(run):
    """Checks the scenario itself: the core learns the folder, and the 8-step base is far from it."""
    _, runs = run
    core = selected(runs["core"]["history"])["val_nat_acc"]
    base = selected(runs["base"]["history"])["val_nat_acc"]
    assert core >= 0.8 and base <= core - 0.2


@pytest.mark.parametrize("name", list(BETAS))
def test_an_era_fine_tune_never_selects_a_collapse(run, name):
    """The selected epoch is the best of ``select`` among the epochs within ``max_nat_drop`` of the
    initial model (epoch 0, always eligible; later epochs win ties). So its validation accuracy
    is never more than ``max_nat_drop`` below the base's."""
    _, runs = run
    r = runs[name]
    cfg, hist = r["section"]["train"], r["history"]
    init = hist[0]["val_nat_acc"]
    eligible = [h for h in hist if h["val_nat_acc"] >= init - cfg["max_nat_drop"]]
    chosen = selected(hist)
    assert hist[0] in eligible
    assert chosen is max(eligible, key=lambda h: (score(h, cfg["select"]), h["epoch"]))
    assert chosen["val_nat_acc"] >= init - cfg["max_nat_drop"]


def test_the_guard_was_needed_and_a_refused_fine_tune_keeps_the_base_exactly(run):
    """On this base at least one ERA fine-tune collapses in every epoch. Selection then keeps epoch 0,
    and the saved model has the base's weights bit for bit. A fine-tune that selected a later epoch
    saved weights that differ from the base's."""
    _, runs = run
    base = load_model(runs["base"]["path"])[0].state_dict()
    fallbacks = 0
    for name in BETAS:
        hist = runs[name]["history"]
        cfg = runs[name]["section"]["train"]
        weights = load_model(runs[name]["path"])[0].state_dict()
        same = all(torch.equal(weights[k], base[k]) for k in base)
        if selected(hist) is hist[0]:
            fallbacks += 1
            assert all(h["val_nat_acc"] < hist[0]["val_nat_acc"] - cfg["max_nat_drop"]
                       or score(h, cfg["select"]) < score(hist[0], cfg["select"]) for h in hist[1:]), name
            assert same, name
        else:
            assert not same, name
    assert fallbacks >= 1
    refused = [h for n in BETAS for h in runs[n]["history"][1:] if h["val_nat_acc"]
               < runs[n]["history"][0]["val_nat_acc"] - runs[n]["section"]["train"]["max_nat_drop"]]
    assert refused  # the guard refused at least one epoch: without it a collapse could be selected


@pytest.mark.parametrize("name", list(BETAS))
def test_a_fallback_or_a_lossy_selection_is_printed(run, name):
    _, runs = run
    hist, out = runs[name]["history"], runs[name]["out"]
    chosen = selected(hist)
    drop = hist[0]["val_nat_acc"] - chosen["val_nat_acc"]
    if chosen is hist[0]:
        assert f"[{name}] warning: " in out and "keeping the initial weights" in out
    elif drop > WARN_NAT_DROP:
        assert f"[{name}] warning: the selected epoch {chosen['epoch']} loses {100 * drop:.1f} points" in out
    else:
        assert f"[{name}] warning" not in out


def val_records(n_correct: int, n: int = 100) -> pd.DataFrame:
    """``n`` validation records, the first ``n_correct`` accurate (pred == label)."""
    label = np.arange(n) % CLASSES
    pred = np.where(np.arange(n) < n_correct, label, (label + 1) % CLASSES)
    return pd.DataFrame({"index": np.arange(n), "label": label, "pred": pred})


def test_accuracy_warnings_name_only_the_fine_tune_that_lost_more_than_the_threshold():
    """Base 80 %; fine-tunes 79 % (1 point lost, under 3) and 70 % (10 points lost, over 3).
    The core (100 %) and a model without validation records are not fine-tunes of the base."""
    def model(name, role, n_correct):
        rec = None if n_correct is None else val_records(n_correct)
        return ModelInfo(name, "era", 1.0, role, val_records(50), rec)

    models = [model("core", "core", 100), model("base", "base", 80), model("era-79", "sweep", 79),
              model("era-70", "headline", 70), model("era-none", "sweep", None)]
    warnings = accuracy_warnings(models, warn_nat_drop=0.03)
    assert len(warnings) == 1
    assert warnings[0].startswith("- **era-70** loses 10.0 points of validation accuracy")
    assert "(80.0 %)" in warnings[0]
    assert accuracy_warnings(models, warn_nat_drop=0.11) == []
    assert accuracy_warnings([m for m in models if m.role != "base"], warn_nat_drop=0.03) == []
