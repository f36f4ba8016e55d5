"""Synthetic single-symbol tick streams with the awkward cases the estimators must survive."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.features.batch import Ticks

NS = 1_000_000_000
T0 = 1_514_903_400 * NS  # 2018-01-02 09:30 ET


def synthetic_ticks(seed: int, minutes: int = 120) -> Ticks:
    """Random-walk NBBO and trades over ``minutes``, with crossed, locked and one-sided quotes, a 12-minute
    silence (stale quotes, empty bars), a quotes-only stretch (mid-quote fallback) and same-ns ticks."""
    rng = np.random.default_rng(seed)
    n = minutes * 60 * 4
    ts = T0 + np.sort(rng.integers(0, minutes * 60 * NS, n))
    ts[100:110] = ts[100]  # a burst sharing one timestamp
    silence = (ts > T0 + 40 * 60 * NS) & (ts < T0 + 52 * 60 * NS)
    ts = ts[~silence]
    n = ts.size
    mid = 50.0 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    half = 0.005 * rng.integers(1, 4, n)
    bid, ask = np.round(mid - half, 2), np.round(mid + half, 2)
    is_trade = rng.random(n) < 0.4
    quotes_only = (ts > T0 + 70 * 60 * NS) & (ts < T0 + 105 * 60 * NS)
    is_trade &= ~quotes_only
    side = rng.choice([-1.0, 0.0, 1.0], n, p=[0.45, 0.1, 0.45])
    price = np.where(is_trade, np.round(mid + side * half + rng.normal(0, 0.002, n), 2), np.nan)
    size = np.where(is_trade, 100.0 * rng.integers(1, 20, n), np.nan)
    odd = rng.random(n)
    bid = np.where(odd < 0.02, ask + 0.01, bid)  # crossed
    bid = np.where((odd >= 0.02) & (odd < 0.04), ask, bid)  # locked
    ask = np.where((odd >= 0.04) & (odd < 0.05), np.nan, ask)  # one-sided
    bid_size = 100.0 * rng.integers(1, 50, n)
    ask_size = 100.0 * rng.integers(1, 50, n)
    q = ~is_trade
    return Ticks(
        ts_ns=ts,
        is_trade=is_trade,
        price=price,
        size=size,
        bid=np.where(q, bid, np.nan),
        bid_size=np.where(q, bid_size, np.nan),
        ask=np.where(q, ask, np.nan),
        ask_size=np.where(q, ask_size, np.nan),
    )


@pytest.fixture(params=[1, 2, 3])
def ticks(request) -> Ticks:
    return synthetic_ticks(request.param)
