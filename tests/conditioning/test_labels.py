"""Regime labels (conditioning/labels.py): the evidence tests hold their stated size under the random-walk null
and find what they test for; the rules' precedence; truth labels from planted stretches."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.features.pattern import N_CHANNELS, PATTERN_BARS
from conditioning.features.state import FeatureParams
from conditioning.labels import (
    DF_CRIT,
    T_CRIT,
    EvidenceRules,
    dickey_fuller_tau,
    lookback_ns,
    trend_t,
    truth_labels,
)
from conditioning.regime import REGIME_INDEX
from conditioning.sim.market import Stretch
from schemas.layout import REGIME_FEATURE_NAMES, SsrLuldState

COL = {n: i for i, n in enumerate(REGIME_FEATURE_NAMES)}
N_MC = 8_000
MIN = 60_000_000_000


def as_pattern(z: np.ndarray) -> np.ndarray:
    """Bar returns ``[N, 32]`` into the pattern layout (channel 0 of each bar; the rest zero)."""
    p = np.zeros((len(z), PATTERN_BARS, N_CHANNELS))
    p[:, :, 0] = z
    return p.reshape(len(z), -1)


def ar1_returns(rng, n: int, phi: float) -> np.ndarray:
    """Returns of a path that reverts: levels ``x_b = phi x_{b-1} + e_b`` (an OU sampled every bar)."""
    e = rng.standard_normal((n, PATTERN_BARS + 1))
    x = np.zeros_like(e)
    for b in range(1, e.shape[1]):
        x[:, b] = phi * x[:, b - 1] + e[:, b]
    return np.diff(x, axis=1)


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_tests_hold_their_size_on_a_random_walk(alpha) -> None:
    """On i.i.d. Gaussian returns (a driftless random walk) each test rejects on ~alpha of the windows: the
    tabulated critical values belong to n = 32 returns. Bound: 4 binomial standard errors."""
    z = np.random.default_rng(1).standard_normal((N_MC, PATTERN_BARS))
    bound = 4 * np.sqrt(alpha * (1 - alpha) / N_MC)
    trend = np.mean(np.abs(trend_t(z)) >= T_CRIT[alpha])
    df = np.mean(dickey_fuller_tau(z) <= DF_CRIT[alpha])
    assert abs(trend - alpha) < bound, trend
    assert abs(df - alpha) < bound, df


def test_tests_find_what_they_test_for() -> None:
    rng = np.random.default_rng(2)
    z = rng.standard_normal((2_000, PATTERN_BARS))
    drift = np.mean(np.abs(trend_t(z + 0.7)) >= T_CRIT[0.05])  # a drift of 0.7 sd per bar
    # The simulator's mean reversion seen in one-minute bars: OU half-life 40 s -> phi = 2^(-60/40) = 0.35.
    reverting = np.mean(dickey_fuller_tau(ar1_returns(rng, 2_000, 0.35)) <= DF_CRIT[0.05])
    assert drift > 0.95, drift
    assert reverting > 0.8, reverting
    assert trend_t(np.zeros((1, PATTERN_BARS)))[0] == 0.0 and dickey_fuller_tau(np.zeros((1, PATTERN_BARS)))[0] == 0.0


def test_evidence_rules_precedence() -> None:
    rules = EvidenceRules()
    rows = np.zeros((9, 20))
    rows[:, COL["ssr_luld_normal"]] = 1.0
    z = np.tile(np.r_[1.0, -1.0] * 1.0, PATTERN_BARS // 2)[None].repeat(9, axis=0)  # alternating: no drift
    z = z + np.linspace(0, 0.01, PATTERN_BARS)  # not perfectly periodic (the DF fit stays defined)
    rows[0, [COL["ssr_luld_ssr_active"], COL["ssr_luld_luld_limit"]]] = 1.0  # both restrictions: LULD wins
    rows[1, COL["ssr_luld_halted"]] = 1.0
    rows[2, COL["ssr_luld_ssr_active"]] = 1.0
    rows[2, [COL["log_amihud_rel"], COL["log_spread_quoted_rel_tw_rel"]]] = 2.0  # SSR beats illiquid
    rows[3, [COL["log_amihud_rel"], COL["log_spread_quoted_rel_tw_rel"]]] = 0.7  # both >= log 2: illiquid
    rows[4, COL["log_amihud_rel"]] = 2.0  # impact alone is not illiquidity; the trend decides
    z[4] = 1.0 + 0.1 * np.sin(np.arange(PATTERN_BARS))
    rows[5, COL["log_tsrv_rel"]] = 3.0  # high variance, but the alternating path reverts: mean_reverting
    z[6] = np.random.default_rng(0).standard_normal(PATTERN_BARS)  # no evidence of either
    rows[6, COL["log_tsrv_rel"]] = 0.7
    rows[7, COL["log_tsrv_rel"]] = -0.7
    z[7] = z[6]
    z[8] = z[6]  # nothing: normal; a NaN level is no evidence
    rows[8, COL["log_tsrv_rel"]] = np.nan
    names = [
        "luld_active",
        "luld_active",
        "ssr_active",
        "illiquid",
        "trending",
        "mean_reverting",
        "high_vol",
        "low_vol",
        "normal",
    ]
    assert abs(trend_t(z[6:7])[0]) < T_CRIT[0.05] and dickey_fuller_tau(z[6:7])[0] > DF_CRIT[0.05]
    np.testing.assert_array_equal(rules.apply(rows, as_pattern(z)), [REGIME_INDEX[n] for n in names])
    assert SsrLuldState.HALTED > SsrLuldState.LULD_LIMIT > SsrLuldState.SSR_ACTIVE  # the order the rules mirror
    with pytest.raises(ValueError, match="alpha"):
        EvidenceRules(alpha=0.1)


def test_truth_labels_need_a_dominant_planted_regime() -> None:
    params = FeatureParams()
    lookback = lookback_ns(params)
    assert lookback == 32 * MIN  # the pattern's 32 bars are longer than the 30-bar feature window
    stretches = [Stretch("A", "calm", 0, 100 * MIN), Stretch("A", "volatile", 100 * MIN, 200 * MIN)]
    ends = np.array([50, 100, 111, 121, 122, 300]) * MIN
    raw = np.zeros((len(ends), 20))
    raw[:, COL["ssr_luld_normal"]] = 1.0
    raw[5, [COL["ssr_luld_normal"], COL["ssr_luld_ssr_active"]]] = [0.0, 1.0]
    labels = truth_labels(np.array(["A"] * len(ends)), ends, raw, stretches, params)
    # 50, 100: all calm; 111: 21 of 32 minutes calm and 121: 21 of 32 volatile (2/3 is 21.3): neither dominates;
    # 122: 22 of 32 volatile; 300: past every stretch, but SSR is active.
    names = ["low_vol", "low_vol", "normal", "normal", "high_vol", "ssr_active"]
    assert labels.tolist() == [REGIME_INDEX[n] for n in names], labels
