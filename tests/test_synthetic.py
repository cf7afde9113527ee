"""The Figure 1 data (data/synthetic.py): class sizes, determinism, validation, and the geometry that
puts the figure in the paper's regime (checked on the data alone, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from robust_abstain.data import prepare
from robust_abstain.data.synthetic import CENTERS, STDS, WEIGHTS, class_labels, layout, make_gaussians
from robust_abstain.errors import ParamError

ROOT = Path(__file__).resolve().parents[1]


def test_class_labels_take_the_weights_shares():
    """n = 100, weights (0.49, 0.49, 0.02): 49, 49 and 2 labels (by hand); n = 7, equal weights:
    (i + 1/2) / 7 = 0.07, 0.21 | 0.36, 0.50, 0.64 | 0.79, 0.93 against the shares 1/3, 2/3, 1."""
    assert torch.bincount(class_labels(100, torch.tensor(WEIGHTS))).tolist() == [49, 49, 2]
    assert class_labels(7, torch.ones(3)).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_same_seed_same_points_and_stds_per_class():
    c, s, w = layout({})
    x1, y1 = make_gaussians(500, c, s, w, seed=3)
    x2, y2 = make_gaussians(500, c, s, w, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(make_gaussians(500, c, s, w, seed=4)[0], x1)
    assert ((x1 >= 0) & (x1 <= 1)).all()
    assert torch.equal(layout({"std": [0.1, 0.2, 0.3]})[1], torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]))


@pytest.mark.parametrize("cfg, match", [({"std": [0.1, 0.2]}, "synthetic.std"),
                                        ({"std": [0.1, -0.2, 0.1]}, "synthetic.std"),
                                        ({"weights": [1, 1]}, "synthetic.weights"),
                                        ({"centers": [[0.2, 1.3], [0.5, 0.5]]}, "synthetic.centers"),
                                        ({"centres": [[0.2, 0.3]]}, "unknown keys")])
def test_bad_layouts_are_param_errors(cfg, match):
    with pytest.raises(ParamError, match=match):
        prepare("synthetic", cfg, 0)


def test_params_use_the_code_layout():
    """params.yaml and params-paper.yaml draw the layout whose geometry the next test checks."""
    for name in ("params.yaml", "params-paper.yaml"):
        data = yaml.safe_load((ROOT / name).read_text())["synthetic"]["data"]
        assert [tuple(c) for c in data["centers"]] == list(CENTERS), name
        assert tuple(data["std"]) == STDS and tuple(data["weights"]) == WEIGHTS, name


def test_default_layout_is_in_figure_1s_regime():
    """At params' eps: (a) the midline of classes 0 and 1 leaves >= 99.5 % of their points more than
    eps (Linf) from it, so a robust model loses almost none of them; (b) >= 20 % of class-1 points
    (52 % measured) lie within 2 eps (Linf) of a class-2 point, and of each such pair one point is
    non-robust for any model accurate on both: carving class 2 out (100 % natural accuracy) puts a
    non-robust band into dense class-1 territory, giving it up costs only its 2 % share, which a
    robust model then holds robustly and inaccurately."""
    eps = yaml.safe_load((ROOT / "params.yaml").read_text())["synthetic"]["eps"]
    x, y = make_gaussians(4000, *layout({}), seed=0)
    c = torch.tensor(CENTERS)
    w = c[1] - c[0]
    b = w @ (c[0] + c[1]) / 2
    two = y < 2
    margin = (x[two] @ w - b).abs() / w.abs().sum()          # Linf distance to the hyperplane
    assert (margin > eps).float().mean() >= 0.995
    linf = torch.cdist(x[y == 1], x[y == 2], p=float("inf")).min(1).values
    assert (linf < 2 * eps).float().mean() >= 0.2
    assert abs((y == 2).float().mean().item() - 0.02) < 1e-3
