"""Randomized smoothing checked against a linear base classifier, whose smoothed classifier is known
in closed form: for logits (0, w.x + b), P(f(x + eta) = 1) = Phi((w.x + b) / (sigma ||w||)), and G's
true L2 radius is sigma * PhiInv(p_A) = |w.x + b| / ||w||."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from torch import nn

from robust_abstain.evaluation.certify import CertifyConfig, certify_dataset, certify_settings
from robust_abstain.evaluation.smoothing import Smooth, lower_confidence_bound, point_generators
from robust_abstain.models.checkpoint import weights_digest
from robust_abstain.seeds import stream_seed
from robust_abstain.evaluation.shards import merge_shards, shard_count, shard_meta, shard_positions
from robust_abstain.io import save_json
from robust_abstain.errors import ParamError
from robust_abstain.analysis.records import ABSTAIN, CERTIFIED_COLUMNS

D, SIGMA, B = 8, 0.5, 0.1


class Linear2(nn.Module):
    """Two-class linear classifier with logits (0, w.x + b); can fail after ``fail_after`` calls and
    checks that it is called in eval mode."""

    def __init__(self, seed: int = 0, fail_after: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(D, generator=g))
        self.b = nn.Parameter(torch.tensor(B))
        self.fail_after, self.calls, self.sizes = fail_after, 0, []

    def forward(self, x):
        assert not self.training, "base classifier must run in eval mode"
        self.calls += 1
        self.sizes.append(len(x))
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def points_at(model: Linear2, margins, seed: int = 1) -> torch.Tensor:
    """Inputs whose signed distance (w.x + b) / ||w|| to the boundary is each of ``margins``."""
    w = model.w.detach()
    u = w / w.norm()
    g = torch.Generator().manual_seed(seed)
    other = torch.randn(len(margins), D, generator=g)
    other -= (other @ u)[:, None] * u  # orthogonal part: irrelevant to f
    m = torch.as_tensor(margins, dtype=torch.float32)
    return other + (m - B / w.norm())[:, None] * u


MARGINS = [-1.0, -0.6, -0.3, -0.1, 0.05, 0.15, 0.25, 0.4, 0.7, 1.2]


def test_certify_is_sound_and_tight_on_linear_model():
    f = Linear2()
    x = points_at(f, MARGINS)
    n0, n, alpha = 100, 20_000, 0.001
    cls, radius, spred = Smooth(f, 2, SIGMA).certify_points(x, range(len(x)), 0, n0, n, alpha, 1000)
    for m, c, r, p in zip(MARGINS, cls.tolist(), radius.tolist(), spred.tolist()):
        true_cls, pa = int(m > 0), norm.cdf(abs(m) / SIGMA)
        assert math.isclose(SIGMA * norm.ppf(pa), abs(m), rel_tol=1e-9)
        assert c == true_cls and p == true_cls
        assert 0 < r <= abs(m)  # soundness: never more than G's true radius
        sd = math.sqrt(n * pa * (1 - pa))  # the radius of the Clopper-Pearson bound at k ~ n pA
        k_lo, k_hi = max(0, math.floor(n * pa - 5 * sd)), min(n, math.ceil(n * pa + 5 * sd))
        r_lo, r_hi = (SIGMA * norm.ppf(lower_confidence_bound(k, n, alpha)) for k in (k_lo, k_hi))
        assert r_lo - 1e-12 <= r <= r_hi + 1e-12
        expected = SIGMA * norm.ppf(lower_confidence_bound(round(n * pa), n, alpha))
        assert abs(r - expected) < 0.05 * SIGMA


def test_radius_is_exactly_sigma_phiinv_of_clopper_pearson():
    f = Linear2()
    x = points_at(f, [0.3, -0.5])
    s = Smooth(f, 2, SIGMA)
    c0, c = s.noise_counts(x, 50, 5000, 1000, point_generators(3, [0, 1]))
    cls, radius, _ = s.certify_points(x, [0, 1], 3, 50, 5000, 0.01, 1000)
    from statsmodels.stats.proportion import proportion_confint
    for i in range(2):
        k = int(c[i, cls[i]])
        lo = proportion_confint(k, 5000, alpha=0.02, method="beta")[0]
        assert radius[i].item() == pytest.approx(SIGMA * norm.ppf(lo), rel=1e-9)


def test_abstains_near_half():
    f = Linear2()
    x = points_at(f, [0.0, 0.002, -0.002])
    s = Smooth(f, 2, SIGMA)
    cls, radius, spred = s.certify_points(x, [0, 1, 2], 0, 100, 20_000, 0.001, 1000)
    assert cls.tolist() == [ABSTAIN] * 3 and radius.tolist() == [0.0] * 3
    assert spred.tolist() == [ABSTAIN] * 3
    assert s.predict(x, 20_000, 0.001, 1000, torch.Generator().manual_seed(0)).tolist() == [ABSTAIN] * 3


class Parity(nn.Module):
    """Class = position in the batch mod 2: an exact tie on any even batch."""

    def forward(self, x):
        return nn.functional.one_hot(torch.arange(len(x)) % 2, 3).float()


def test_predict_abstains_on_exact_tie():
    s = Smooth(Parity(), 3, SIGMA)
    _, counts = s.noise_counts(torch.zeros(1, 4), 0, 100, 10)
    assert counts.tolist() == [[50, 50, 0]]
    assert s.predict(torch.zeros(2, 4), 100, 0.05, 10).tolist() == [ABSTAIN, ABSTAIN]
    mock = torch.tensor([[500, 500, 0], [0, 1000, 0], [0, 520, 480], [0, 0, 30]])
    assert Smooth.predict_from_counts(mock, 0.001).tolist() == [ABSTAIN, 1, ABSTAIN, 2]


@pytest.mark.parametrize("kw", [dict(n0=0), dict(n=0), dict(n=1.5), dict(alpha=0.0), dict(alpha=1.0),
                                dict(alpha=-0.1), dict(batch_size=0)])
def test_invalid_parameters(kw):
    s = Smooth(Linear2(), 2, SIGMA)
    args = dict(n0=10, n=10, alpha=0.01, batch_size=10) | kw
    key, value = next(iter(kw.items()))
    with pytest.raises(ParamError, match=f"{key}.*{value!r}"):
        s.certify(torch.zeros(1, D), **args)
    if key != "n0":
        args.pop("n0")
        with pytest.raises(ParamError, match=key):
            s.predict(torch.zeros(1, D), **args)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_invalid_sigma(sigma):
    with pytest.raises(ParamError, match="sigma"):
        Smooth(Linear2(), 2, sigma)


def test_batch_size_and_grouping_invariance():
    f = Linear2()
    x = points_at(f, MARGINS)
    s = Smooth(f, 2, SIGMA)
    idx = list(range(100, 100 + len(x)))
    a = s.certify_points(x, idx, 5, 30, 700, 0.01, batch_size=7)
    b = s.certify_points(x, idx, 5, 30, 700, 0.01, batch_size=1000)
    c1 = s.certify_points(x[:4], idx[:4], 5, 30, 700, 0.01, batch_size=64)
    c2 = s.certify_points(x[4:], idx[4:], 5, 30, 700, 0.01, batch_size=64)
    for t in range(3):
        assert torch.equal(a[t], b[t]) and torch.equal(a[t], torch.cat([c1[t], c2[t]]))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert all(torch.equal(u, v) for u, v in zip(s.noise_counts(x, 30, 700, 7, g1),
                                                 s.noise_counts(x, 30, 700, 999, g2)))


def test_model_sees_full_batches_across_inputs_and_mode_is_restored():
    f = Linear2()
    f.train()
    s = Smooth(f, 2, SIGMA)
    x = points_at(f, MARGINS[:5])
    c0, c = s.noise_counts(x, 3, 10, batch_size=8)
    assert f.training
    assert f.sizes == [8] * 8 + [1]  # 5 * (3 + 10) = 65 draws: full batches spanning inputs
    assert c0.sum(1).tolist() == [3] * 5 and c.sum(1).tolist() == [10] * 5


def test_mode_is_restored_after_a_crash():
    f = Linear2(fail_after=0)
    f.train()
    with pytest.raises(RuntimeError, match="simulated crash"):
        Smooth(f, 2, SIGMA).noise_counts(torch.zeros(1, D), 3, 10, batch_size=8)
    assert f.training


def test_point_generators_are_seeded_by_the_point_stream():
    """Seed of point i: ``stream_seed(seed, i)``, i.e. SeedSequence([seed, i]) (the certified
    records of every profile depend on these values)."""
    gens = point_generators(7, [0, 12, 12])
    assert [g.initial_seed() for g in gens] == [stream_seed(7, i) for i in (0, 12, 12)]
    expected = int(np.random.SeedSequence([7, 12]).generate_state(1, np.uint64)[0])
    assert gens[1].initial_seed() == expected
    assert torch.equal(torch.randn(5, generator=gens[1]), torch.randn(5, generator=gens[2]))


def test_weights_digest_is_sha256_over_names_and_tensor_bytes():
    """The digest the shard files record: sha256 of each state-dict name then its tensor's bytes."""
    import hashlib
    f = Linear2()
    h = hashlib.sha256()
    for name in ("w", "b"):
        h.update(name.encode())
        h.update(getattr(f, name).detach().numpy().tobytes())
    assert weights_digest(f) == weights_digest(f.state_dict()) == h.hexdigest()
    assert certify_settings(Smooth(f, 2, SIGMA), 10, 100, 0.01, 0)["model"] == h.hexdigest()
    conv = nn.Conv2d(2, 3, 3)
    fast = nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    fast.load_state_dict(conv.state_dict())
    assert weights_digest(fast) == weights_digest(conv)  # layout does not matter, values do
    with torch.no_grad():
        f.b += 1e-6
    assert weights_digest(f) != h.hexdigest()


@pytest.mark.parametrize("profile", ["params.yaml", "params-paper.yaml", "params-full.yaml"])
def test_certify_config_reads_every_profile(profile):
    import yaml
    from pathlib import Path
    p = yaml.safe_load((Path(__file__).resolve().parents[1] / profile).read_text())["certify"]
    cfg = CertifyConfig.from_params(p, "certify")
    assert (cfg.n0, cfg.n, cfg.alpha, cfg.sigma) == (p["n0"], p["n"], p["alpha"], p["sigma"])
    assert cfg.device == p.get("device", "auto")


def test_certify_config_rejects_typos_missing_keys_and_bad_values():
    good = dict(sigma=0.25, n0=100, n=1000, alpha=0.001, n_points=200, batch_size=1000, seed=0,
                shards=[0])
    assert CertifyConfig.from_params(good, "certify").n == 1000
    with pytest.raises(ParamError, match=r"unknown keys \['nn'\]"):
        CertifyConfig.from_params(good | {"nn": 5}, "certify")
    with pytest.raises(ParamError, match=r"certify lacks \['n'\]"):
        CertifyConfig.from_params({k: v for k, v in good.items() if k != "n"}, "certify")
    for key, bad in (("alpha", 1.0), ("n0", 0), ("sigma", 0.0), ("seed", -1), ("batch_size", 0)):
        with pytest.raises(ParamError, match=f"certify.{key}"):
            CertifyConfig.from_params(good | {key: bad}, "certify")
    with pytest.raises(ParamError, match="certify.shards"):
        CertifyConfig.from_params(good | {"shards": [1]}, "certify")


def _run(tmp_path, name, model, x, y, idx, **kw):
    args = dict(n0=40, n=400, alpha=0.01, batch_size=64, seed=11, points_per_call=3, progress=False)
    return certify_dataset(Smooth(model, 2, SIGMA), x, y, idx, tmp_path / name, **(args | kw))


@pytest.fixture
def data():
    f = Linear2()
    x = points_at(f, np.linspace(-0.8, 0.8, 10))
    y = torch.tensor([0, 0, 1, 0, 1, 1, 1, 0, 1, 1])
    idx = torch.tensor([50, 3, 7, 21, 8, 40, 1, 33, 12, 9])
    return x, y, idx


def test_certify_dataset_records(tmp_path, data):
    x, y, idx = data
    df = _run(tmp_path, "c.csv", Linear2(), x, y, idx)
    assert list(df.columns) == CERTIFIED_COLUMNS
    assert df["index"].tolist() == sorted(idx.tolist())
    assert df.equals(pd.read_csv(tmp_path / "c.csv"))
    order = idx.argsort()
    assert df["label"].tolist() == y[order].tolist()
    assert df["pred"].tolist() == (x[order] @ Linear2().w.detach() + B > 0).long().tolist()
    assert ((df["conf"] >= 0.5) & (df["conf"] <= 1)).all()
    assert ((df["cert_pred"] == ABSTAIN) == (df["cert_radius"] == 0)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


def test_a_partial_file_made_by_other_code_is_not_resumed(tmp_path, data, monkeypatch):
    """The partial file's key holds the package's source fingerprint: after a code change (here
    simulated) the stage starts afresh instead of mixing old and new records."""
    import robust_abstain.digests as train
    x, y, idx = data
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, "res.csv", Linear2(fail_after=60), x, y, idx)
    assert len(pd.read_csv(tmp_path / "res.csv.partial.csv")) == 6
    monkeypatch.setattr(train, "source_fingerprint", lambda: "other code")
    again = Linear2()
    with pytest.warns(UserWarning, match="other settings"):
        _run(tmp_path, "res.csv", again, x, y, idx)
    assert again.calls == 3 * 22 + 8  # all 10 points certified again (groups of 3, 3, 3, 1)


def test_resume_after_crash_gives_identical_file(tmp_path, data):
    x, y, idx = data
    _run(tmp_path, "full.csv", Linear2(), x, y, idx)
    flaky = Linear2(fail_after=60)  # each group of 3 points: 1 clean + 21 noisy batches
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, "res.csv", flaky, x, y, idx)
    assert not (tmp_path / "res.csv").exists()
    partial = pd.read_csv(tmp_path / "res.csv.partial.csv")
    assert len(partial) == 6
    resumed = Linear2()
    df = _run(tmp_path, "res.csv", resumed, x, y, idx)
    assert resumed.calls == 22 + 8  # only the 4 remaining points (groups of 3 and 1) were certified
    assert (tmp_path / "res.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    assert not (tmp_path / "res.csv.partial.csv").exists() and not (tmp_path / "res.csv.partial.json").exists()
    assert list(df.columns) == CERTIFIED_COLUMNS


def test_resume_drops_torn_line_and_restarts_on_other_settings(tmp_path, data):
    x, y, idx = data
    _run(tmp_path, "full.csv", Linear2(), x, y, idx)
    with pytest.raises(RuntimeError):
        _run(tmp_path, "torn.csv", Linear2(fail_after=30), x, y, idx)
    partial = tmp_path / "torn.csv.partial.csv"
    with open(partial, "a") as f:
        f.write("12,1,1,0.73")  # a row cut short by a crash mid-write
    _run(tmp_path, "torn.csv", Linear2(), x, y, idx)
    assert (tmp_path / "torn.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()

    with pytest.raises(RuntimeError):
        _run(tmp_path, "other.csv", Linear2(fail_after=30), x, y, idx, seed=99)
    with pytest.warns(UserWarning, match="other settings"):
        _run(tmp_path, "other.csv", Linear2(), x, y, idx)
    assert (tmp_path / "other.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()


def test_certify_dataset_validates(tmp_path, data):
    x, y, idx = data
    with pytest.raises(ParamError, match="unique"):
        _run(tmp_path, "u.csv", Linear2(), x, y, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ParamError, match="length"):
        _run(tmp_path, "l.csv", Linear2(), x, y[:5], idx)
    with pytest.raises(ParamError, match="points_per_call"):
        _run(tmp_path, "p.csv", Linear2(), x, y, idx, points_per_call=0)
    assert not any(tmp_path.iterdir())


# -- sharding ---------------------------------------------------------------------------------------
def _shard(tmp_path, model, x, y, s, k, seed=11, name=None):
    """What stage certify does for shard s of k: certify its points, write the sidecar."""
    pos = torch.tensor(shard_positions(len(x), s, k), dtype=torch.long)
    out = tmp_path / (name or f"{s}.csv")
    _run(tmp_path, out.name, model, x[pos], y[pos], pos, seed=seed)
    save_json(shard_meta(certify_settings(Smooth(model, 2, SIGMA), 40, 400, 0.01, seed), s, k, len(x)),
              str(out) + ".json")
    return out


def test_shard_positions_partition_the_points():
    parts = [shard_positions(10, s, 3) for s in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shard_positions(2, 2, 3) == []
    with pytest.raises(ParamError, match="shard must be in"):
        shard_positions(10, 3, 3)
    assert shard_count(None) == 1 and shard_count([0]) == 1 and shard_count([0, 1, 2]) == 3
    for bad in ([], [1], [0, 2], [0, 0], 3, "0,1"):
        with pytest.raises(ParamError, match="certify.shards"):
            shard_count(bad)


def test_merged_shards_equal_the_unsharded_file(tmp_path, data):
    x, y, _ = data
    pos = torch.arange(len(x))
    _run(tmp_path, "whole.csv", Linear2(), x, y, pos)
    shards = [_shard(tmp_path, Linear2(), x, y, s, 3) for s in range(3)]
    merged = merge_shards(shards)
    from robust_abstain.io import save_csv
    save_csv(merged, tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert merge_shards(shards[::-1]).equals(merged)  # any order of the files


def test_merge_refuses_inconsistent_shards(tmp_path, data):
    x, y, _ = data
    good = [_shard(tmp_path, Linear2(), x, y, s, 2) for s in range(2)]
    with pytest.raises(ParamError, match="missing"):
        merge_shards([good[0], tmp_path / "9.csv"])
    with pytest.raises(ParamError, match="expected 1 shards"):
        merge_shards(good[:1])  # shard 1 left out
    other_seed = _shard(tmp_path, Linear2(), x, y, 1, 2, seed=5, name="s5.csv")
    with pytest.raises(ParamError, match=r"differs .* \['seed'\]"):
        merge_shards([good[0], other_seed])
    other_model = _shard(tmp_path, Linear2(seed=3), x, y, 1, 2, name="m3.csv")
    with pytest.raises(ParamError, match=r"\['model'\]"):
        merge_shards([good[0], other_model])
    with pytest.raises(ParamError, match="each of 0..1 once"):
        merge_shards([good[0], good[0]])
    with pytest.raises(ParamError, match="expected 2 shards over 7"):
        merge_shards(good, n_points=7)
    cut = tmp_path / "cut.csv"
    cut.write_text("".join(good[1].read_text().splitlines(keepends=True)[:-1]))  # a point lost
    (tmp_path / "cut.csv.json").write_text((tmp_path / "1.csv.json").read_text())
    with pytest.raises(ParamError, match="exactly the points of shard 1"):
        merge_shards([good[0], cut])
