"""SymbolFeatures: contract errors, pickling mid-stream, bounded memory, patterns and their outcomes."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conditioning.features.baseline import LevelBaseline
from conditioning.features.batch import Ticks
from conditioning.features.state import FeatureParams, SymbolFeatures, replay
from schemas.layout import OUTCOME_NAMES, PATTERN_DIM, REGIME_FEATURE_DIM, SsrLuldState

from .conftest import NS, T0, synthetic_ticks

MIN = 60 * NS
PARAMS = FeatureParams(bar_ns=MIN, lookback_ns=10 * MIN)


def test_features_have_the_documented_shapes(ticks: Ticks) -> None:
    bars = replay(SymbolFeatures("SYM", PARAMS), ticks)
    b = bars[-1]
    assert b.regime_features.shape == (REGIME_FEATURE_DIM,) and b.pattern.shape == (PATTERN_DIM,)
    assert b.pattern.dtype == np.float32 and b.window_end_ns - b.window_start_ns == PARAMS.lookback_ns
    # the level features are log ratios to the symbol's trailing baseline, recomputed here from the raw levels
    base = LevelBaseline(6, PARAMS.baseline_halflife_bars)
    for x in bars:  # the baseline learns only when the bar that just closed had ticks
        in_bar = (ticks.ts_ns >= x.window_end_ns - PARAMS.bar_ns) & (ticks.ts_ns < x.window_end_ns)
        rel = base.relative(np.array([x.tsrv, x.bpv, x.amihud, *x.spread]), update=bool(in_bar.any()))
    np.testing.assert_allclose(b.regime_features[:3], rel[:3], rtol=1e-12)
    np.testing.assert_allclose(b.regime_features[17:], rel[3:], rtol=1e-12)
    np.testing.assert_array_equal(b.regime_features[7:17], b.volume_profile)
    assert b.regime_features[3 + b.ssr_luld_state] == 1.0 and b.regime_features[3:7].sum() == 1.0
    profiles = np.stack([x.volume_profile for x in bars if x.n_trades])
    np.testing.assert_allclose(profiles.sum(axis=1), 1.0)


def test_pickle_mid_stream_resumes_identically() -> None:
    t = synthetic_ticks(5, minutes=60)
    half = int(np.searchsorted(t.ts_ns, T0 + 30 * MIN))  # split on a bar end, where the dataflow snapshots
    first = t.rows(0, half)
    second = t.rows(half, len(t))
    straight = replay(SymbolFeatures("SYM", PARAMS), t)
    sf = SymbolFeatures("SYM", PARAMS)
    head = replay(sf, first)  # closes the bar ending at the split
    restored = pickle.loads(pickle.dumps(sf))
    tail = [b for b in replay(restored, second) if b.window_end_ns > head[-1].window_end_ns]
    for a, b in zip(straight, head + tail, strict=True):
        assert a.window_end_ns == b.window_end_ns
        np.testing.assert_array_equal(a.regime_features, b.regime_features)
        np.testing.assert_array_equal(a.pattern, b.pattern)


def test_memory_is_bounded_by_the_window() -> None:
    sf = SymbolFeatures("SYM", PARAMS)
    replay(sf, synthetic_ticks(6, minutes=120))
    assert len(sf._bars) == PARAMS.lookback_bars
    assert len(sf._pending) <= PARAMS.pattern_horizon_bars


def test_patterns_mature_after_the_horizon_with_the_realised_outcome() -> None:
    params = FeatureParams(bar_ns=MIN, lookback_ns=10 * MIN, pattern_horizon_bars=3)
    sf = SymbolFeatures("SYM", params)
    prices = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-3, 60)))
    bars = []
    for i, p in enumerate(prices):
        sf.on_trade(T0 + i * MIN + NS, float(p), 100.0)
        bars.append(sf.close_bar(T0 + (i + 1) * MIN))
    assert [len(b.matured) for b in bars[:34]] == [0] * 34  # 32 bars of history, then 3 to mature
    assert all(len(b.matured) == 1 for b in bars[34:])
    pat = bars[40].matured[0]
    assert pat.end_ns == bars[37].window_end_ns and pat.outcome_end_ns == bars[40].window_end_ns
    np.testing.assert_array_equal(pat.vector, bars[37].pattern)
    expected_ret = math.log(prices[40] / prices[37])
    expected_rv = sum(math.log(prices[i] / prices[i - 1]) ** 2 for i in (38, 39, 40))
    assert len(OUTCOME_NAMES) == 2
    np.testing.assert_allclose(pat.outcome, [expected_ret, math.log(expected_rv)], rtol=1e-6)


@settings(max_examples=6, deadline=None)
@given(
    # powers of two scale prices exactly in binary floating point, so bucket edges stay edges
    price_scale=st.sampled_from([2.0**k for k in range(-6, 7)]),
    size_scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 1000),
)
def test_pattern_and_shape_features_are_scale_invariant(price_scale: float, size_scale: float, seed: int) -> None:
    t = synthetic_ticks(seed, minutes=40)
    scaled = Ticks(
        t.ts_ns,
        t.is_trade,
        t.price * price_scale,
        t.size * size_scale,
        t.bid * price_scale,
        t.bid_size,
        t.ask * price_scale,
        t.ask_size,
    )
    a = replay(SymbolFeatures("SYM", PARAMS), t)[-1]
    b = replay(SymbolFeatures("SYM", PARAMS), scaled)[-1]
    np.testing.assert_allclose(a.pattern, b.pattern, atol=2e-4)
    np.testing.assert_allclose(a.volume_profile, b.volume_profile, atol=1e-9)
    np.testing.assert_allclose([a.rv, a.tsrv, a.bpv], [b.rv, b.tsrv, b.bpv], rtol=1e-6)
    assert b.amihud == pytest.approx(a.amihud / (price_scale * size_scale), rel=1e-6)


def test_ssr_state_comes_from_the_tracker() -> None:
    import datetime as dt

    sf = SymbolFeatures("SYM", PARAMS)
    sf.on_reference(dt.date(2018, 1, 2), 100.0, 1)
    sf.on_trade(T0 + NS, 95.0, 100.0)
    assert sf.close_bar(T0 + MIN).ssr_luld_state == SsrLuldState.NORMAL
    sf.on_trade(T0 + MIN + NS, 89.99, 100.0)  # -10.01% from the prior close: Rule 201
    b = sf.close_bar(T0 + 2 * MIN)
    assert b.ssr_luld_state == SsrLuldState.SSR_ACTIVE and b.regime_features[3 + SsrLuldState.SSR_ACTIVE] == 1.0


def test_empty_bars_give_nan_and_flags_not_errors() -> None:
    sf = SymbolFeatures("SYM", PARAMS)
    b = sf.close_bar(T0 + MIN)
    assert b.n_trades == 0 and math.isnan(b.rv) and np.all(np.isnan(b.volume_profile))
    assert {"few_obs", "no_valid_quote", "short_history"} <= set(b.flags)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda sf: sf.on_trade(T0, -1.0, 100.0), "price and size must be finite and > 0"),
        (lambda sf: sf.on_trade(T0, float("nan"), 100.0), "price=nan"),
        (lambda sf: sf.on_trade(T0, 10.0, 0.0), "size=0.0"),
        (lambda sf: sf.on_quote(T0, 10.0, 100.0, -10.1, 100.0), "ask must be >= 0"),
        (lambda sf: sf.close_bar(T0 + 1), "not on the bar grid"),
    ],
)
def test_bad_input_is_a_clear_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(SymbolFeatures("SYM", PARAMS))


def test_time_contract_violations_are_errors() -> None:
    sf = SymbolFeatures("SYM", PARAMS)
    sf.on_trade(T0 + 10 * NS, 10.0, 100.0)
    with pytest.raises(ValueError, match="out of event-time order"):
        sf.on_trade(T0 + 5 * NS, 10.0, 100.0)
    with pytest.raises(ValueError, match=r"call close_bar\(\d+\) first"):
        sf.on_trade(T0 + MIN, 10.0, 100.0)
    sf.close_bar(T0 + MIN)
    with pytest.raises(ValueError, match="already closed"):
        sf.close_bar(T0 + MIN)


@pytest.mark.parametrize(
    "kwargs", [{"lookback_ns": 90 * NS}, {"tsrv_k": 1}, {"pattern_bars": 16}, {"bar_ns": 0}, {"min_returns": 2}]
)
def test_bad_params_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FeatureParams(**kwargs)
