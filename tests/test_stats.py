"""95 % intervals of the report's rates (issue 9, item 8): exact Clopper-Pearson for a rate,
paired percentile bootstrap for a difference of two rates on the same points."""

import numpy as np
import pytest
from scipy.stats import beta

from robust_abstain.errors import DataError, ParamError
from robust_abstain.analysis.stats import Interval, paired_diff_ci, rate_ci


def outcomes(k: int, n: int) -> np.ndarray:
    return np.r_[np.ones(k, bool), np.zeros(n - k, bool)]


def test_rate_ci_clopper_pearson_at_the_ends_by_hand():
    # k = 0: [0, 1 - (alpha/2)^(1/n)]; k = n: [(alpha/2)^(1/n), 1]
    iv = rate_ci(outcomes(0, 10))
    assert iv.value == 0.0 and iv.lo == 0.0
    assert iv.hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)      # 0.3085
    iv = rate_ci(outcomes(10, 10))
    assert iv.value == 1.0 and iv.hi == 1.0
    assert iv.lo == pytest.approx(0.025 ** (1 / 10), abs=1e-9)          # 0.6915
    assert rate_ci(outcomes(0, 10), level=0.9).hi == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-9)


def test_rate_ci_mid_case_is_the_beta_quantiles():
    # k = 3 of n = 10: [Beta(alpha/2; k, n - k + 1), Beta(1 - alpha/2; k + 1, n - k)]
    iv = rate_ci(np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0]))
    assert iv.value == pytest.approx(0.3)
    assert iv.lo == pytest.approx(beta.ppf(0.025, 3, 8), abs=1e-9)      # 0.0667
    assert iv.hi == pytest.approx(beta.ppf(0.975, 4, 7), abs=1e-9)      # 0.6525
    assert iv.as_tuple() == (iv.value, iv.lo, iv.hi)


def test_rate_ci_contains_the_estimate_and_narrows_with_n():
    for n in (1, 7, 50):
        for k in range(n + 1):
            iv = rate_ci(outcomes(k, n))
            assert 0.0 <= iv.lo <= k / n <= iv.hi <= 1.0, (k, n)
    w = [rate_ci(outcomes(n // 10, n)) for n in (100, 1000)]
    assert w[1].hi - w[1].lo < w[0].hi - w[0].lo


def test_rate_ci_rejects_bad_inputs():
    with pytest.raises(DataError):
        rate_ci(np.array([], bool))
    with pytest.raises(DataError):
        rate_ci(np.ones((2, 2), bool))
    with pytest.raises(ParamError):
        rate_ci(outcomes(1, 2), level=1.0)


def test_paired_diff_ci_of_identical_outcomes_is_exactly_zero():
    a = np.random.default_rng(0).random(300) < 0.4
    assert paired_diff_ci(a, a.copy()) == Interval(0.0, 0.0, 0.0)
    # every point discordant the same way: the difference is 1 in every resample
    assert paired_diff_ci(np.ones(50, bool), np.zeros(50, bool)) == Interval(1.0, 1.0, 1.0)


def test_paired_diff_ci_is_deterministic_with_a_seed():
    g = np.random.default_rng(1)
    a, b = g.random(200) < 0.5, g.random(200) < 0.4
    assert paired_diff_ci(a, b, seed=7) == paired_diff_ci(a, b, seed=7)
    other = paired_diff_ci(a, b, seed=8)
    assert other.value == paired_diff_ci(a, b, seed=7).value == pytest.approx(a.mean() - b.mean())
    assert (other.lo, other.hi) != (paired_diff_ci(a, b, seed=7).lo, paired_diff_ci(a, b, seed=7).hi)


def test_paired_diff_ci_matches_the_normal_paired_interval_by_hand():
    """n = 1000: a = 1, b = 0 on 100 points, a = 0, b = 1 on 50, equal elsewhere. d = a - b:
    mean 0.05, var = E[d^2] - mean^2 = 0.15 - 0.0025 = 0.1475, se = sqrt(0.1475 / 1000) = 0.01214,
    so the 95 % interval is about 0.05 -+ 1.96 * 0.01214 = [0.0262, 0.0738]."""
    a = np.r_[np.ones(100), np.zeros(50), np.ones(400), np.zeros(450)].astype(bool)
    b = np.r_[np.zeros(100), np.ones(50), np.ones(400), np.zeros(450)].astype(bool)
    iv = paired_diff_ci(a, b, seed=0)
    assert iv.value == pytest.approx(0.05)
    assert iv.lo == pytest.approx(0.0262, abs=0.004) and iv.hi == pytest.approx(0.0738, abs=0.004)


def test_paired_diff_ci_is_narrower_than_the_unpaired_interval_when_outcomes_agree():
    """a and b agree on 392 of 400 points (4 discordant each way). Unpaired (independent samples)
    the 95 % half-width is 1.96 sqrt(p_a q_a / n + p_b q_b / n) ~ 1.96 sqrt(2 * 0.25 / 400) = 0.069;
    paired it is about 1.96 sqrt(8 / 400) / sqrt(400) = 0.014."""
    g = np.random.default_rng(2)
    a = g.random(400) < 0.5
    b = a.copy()
    b[np.flatnonzero(a)[:4]] = False
    b[np.flatnonzero(~a)[:4]] = True
    iv = paired_diff_ci(a, b, seed=0)
    assert iv.value == pytest.approx(0.0)
    pa, pb = a.mean(), b.mean()
    unpaired = 1.96 * np.sqrt(pa * (1 - pa) / 400 + pb * (1 - pb) / 400)
    assert iv.lo <= 0.0 <= iv.hi
    assert (iv.hi - iv.lo) / 2 < unpaired / 3
    assert (iv.hi - iv.lo) / 2 == pytest.approx(1.96 * np.sqrt(8 / 400) / 20, abs=0.005)


def test_paired_diff_ci_rejects_bad_inputs():
    with pytest.raises(DataError, match="same points"):
        paired_diff_ci(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(DataError):
        paired_diff_ci(np.array([], bool), np.array([], bool))
    with pytest.raises(ParamError):
        paired_diff_ci(np.ones(3, bool), np.ones(3, bool), n_boot=10)
