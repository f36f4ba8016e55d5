"""Volume-at-price profile of a window: 10 equal-width price buckets over the window's traded range.

``profile[j] = sum(size_i : bucket(p_i) = j) / sum(size_i)`` with
``bucket(p) = min(floor(10 (p - low) / (high - low)), 9)`` and ``low``/``high`` the window's lowest/highest
trade price: the share of the window's volume traded in each tenth of its price range, lowest tenth first.
It sums to 1 and is invariant to the price level and to the volume scale; volume piled at the top
(bottom) of the range marks buying (selling) pressure at the extremes, a flat profile a ranging market.
When every trade is at one price the range is empty: the volume is split equally between buckets 4 and 5
(the middle of the range), which keeps the profile symmetric under price reflection. NaN when no trades.
"""

from __future__ import annotations

import numpy as np

N_BUCKETS = 10


def volume_at_price(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The [10] volume-at-price profile of the trades ``prices`` (USD) / ``sizes`` (shares), see module doc."""
    p = np.asarray(prices, dtype=np.float64)
    s = np.asarray(sizes, dtype=np.float64)
    if p.shape != s.shape or p.ndim != 1:
        raise ValueError(f"prices and sizes must be 1-d of one shape, got {p.shape} and {s.shape}")
    total = s.sum()
    if p.size == 0 or not total > 0.0:
        return np.full(N_BUCKETS, np.nan)
    low, high = p.min(), p.max()
    if high == low:
        profile = np.zeros(N_BUCKETS)
        profile[N_BUCKETS // 2 - 1 : N_BUCKETS // 2 + 1] = 0.5
        return profile
    x = p - low  # >= 0, so the integer cast's truncation below is the floor
    x *= N_BUCKETS
    x /= high - low
    buckets = x.astype(np.int64)
    np.minimum(buckets, N_BUCKETS - 1, out=buckets)
    return np.bincount(buckets, weights=s, minlength=N_BUCKETS) / total
