"""Streaming SymbolFeatures == the vectorised batch reference, window by window, to 1e-9 relative."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.features.batch import Ticks, window_features
from conditioning.features.state import FeatureParams, SymbolFeatures, replay

RTOL = 1e-9


def assert_streaming_matches_batch(ticks: Ticks, params: FeatureParams, symbol: str = "SYM") -> int:
    bars = replay(SymbolFeatures(symbol, params), ticks)
    ends = np.array([b.window_end_ns for b in bars])
    ref = window_features(ticks, ends, params)
    got = {
        "n_trades": np.array([b.n_trades for b in bars]),
        "n_quotes": np.array([b.n_quotes for b in bars]),
        "rv": np.array([b.rv for b in bars]),
        "bpv": np.array([b.bpv for b in bars]),
        "amihud": np.array([b.amihud for b in bars]),
        "volume_profile": np.stack([b.volume_profile for b in bars]),
        "spread": np.stack([b.spread for b in bars]),
    }
    for name, value in got.items():
        np.testing.assert_allclose(value, getattr(ref, name), rtol=RTOL, atol=0, equal_nan=True, err_msg=name)
    # TSRV is a difference of two sums of the size of RV: its rounding error scales with RV, not with TSRV.
    tsrv = np.array([b.tsrv for b in bars])
    np.testing.assert_array_equal(np.isnan(tsrv), np.isnan(ref.tsrv))
    finite = ~np.isnan(tsrv)
    assert np.all(np.abs(tsrv - ref.tsrv)[finite] <= RTOL * ref.rv[finite])
    np.testing.assert_array_equal(["mid_quote_prices" in b.flags for b in bars], ref.mid_quote_prices)
    return len(bars)


@pytest.mark.parametrize("tsrv_k", [None, 3])
def test_synthetic_streams(ticks: Ticks, tsrv_k: int | None) -> None:
    params = FeatureParams(bar_ns=60 * 10**9, lookback_ns=10 * 60 * 10**9, tsrv_k=tsrv_k, quote_stale_ns=300 * 10**9)
    assert assert_streaming_matches_batch(ticks, params) > 100


def test_synthetic_stream_short_bars_short_staleness(ticks: Ticks) -> None:
    # 5 s bars, 2-minute window, quotes stale after 2 s: staleness cuts, many empty bars, few-obs windows.
    params = FeatureParams(bar_ns=5 * 10**9, lookback_ns=120 * 10**9, quote_stale_ns=2 * 10**9, min_returns=4)
    assert_streaming_matches_batch(ticks, params)
