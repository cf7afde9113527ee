"""reports/claims.md: each verdict follows from the intervals exactly as the paper states the claim."""
from robust_abstain.report.claims import certified_claim, claims_markdown, composition_claim, era_vs_trades


def _ci(prefix: str, key: str, v: float, lo: float, hi: float) -> dict:
    return {f"{prefix}/{key}": v, f"{prefix}/{key}_lo": lo, f"{prefix}/{key}_hi": hi}


def _composition(d_nat, d_nat_ci, d_rob, sound, adaptive) -> dict:
    m = {**_ci("c", "d_nat_acc", d_nat, *d_nat_ci), **_ci("c", "d_rob_acc", d_rob, d_rob - 0.02, d_rob + 0.02)}
    return {**m, "c/rob_acc_sound": sound, "c/rob_acc_adaptive": adaptive}


def test_table1_claim_holds_only_with_all_three_parts():
    ok = composition_claim(_composition(-0.004, (-0.012, 0.004), 0.16, 0.50, 0.495), "c")
    assert ok[-1].endswith("**holds**") and all("**holds**" in line for line in ok)
    # -0.4 points but the interval misses 0: natural accuracy is lost
    lost = composition_claim(_composition(-0.004, (-0.008, -0.001), 0.16, 0.50, 0.495), "c")
    assert "does not hold" in lost[0] and lost[-1].endswith("**does not hold**")
    # +14.9 points of robust accuracy is short of +15
    assert "does not hold" in composition_claim(_composition(0.0, (-0.01, 0.01), 0.149, 0.5, 0.5), "c")[1]
    # the adaptive attack 1.1 points below the sound score
    weak = composition_claim(_composition(0.0, (-0.01, 0.01), 0.2, 0.500, 0.489), "c")
    assert "does not hold" in weak[2] and weak[-1].endswith("**does not hold**")
    assert composition_claim({}, "c") == []


def test_era_vs_trades_needs_the_whole_interval_below_zero():
    m = {**_ci("vs_trades/era-1", "d_rob_inacc_1x", -0.02, -0.035, -0.005),
         **_ci("vs_trades/era-1", "d_rob_inacc_2x", -0.01, -0.02, 0.0),
         **_ci("vs_trades/era-1", "d_rob_acc_1x", 0.0, -0.01, 0.01),
         **_ci("vs_trades/era-0_25", "d_rob_inacc_1x", -0.02, -0.04, 0.001),
         **_ci("vs_trades/era-0_25", "d_rob_inacc_2x", -0.01, -0.02, 0.0),
         **_ci("vs_trades/era-0_25", "d_rob_acc_1x", 0.0, -0.01, 0.01)}
    lines = era_vs_trades(m)
    assert lines[0].startswith("- era-0_25") and lines[0].endswith("**does not hold**")
    assert lines[1].startswith("- era-1") and lines[1].endswith("**holds**")
    assert "-2.0 [-3.5, -0.5]" in lines[1]


def test_certified_claim_and_the_markdown():
    m = {**_ci("certified/cra-4-noise-ft", "d_rob_inacc_r1", -0.03, -0.05, -0.01),
         **_ci("certified/cra-4-noise-ft", "d_rob_acc_r1", -0.01, -0.03, 0.01)}
    (line,) = certified_claim(m)
    assert line.startswith("- cra-4-noise-ft") and line.endswith("**holds**")
    md = claims_markdown(m, [], 0.03)
    assert "CRA vs noise" in md and "Training warnings" in md and "Table 1" not in md
