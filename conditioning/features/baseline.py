"""Per-symbol trailing baselines: level features as log ratios to the symbol's own recent normal.

Why: volatility, illiquidity and relative spreads have persistent, stock-specific levels (a $5 stock's one-tick
spread is 20 bp, a $500 stock's 0.2 bp). Fed as levels, they tell the model *which stock* it is looking at, and
the conditioning would carry the identity HRM's puzzle id carried (the leakage audit's figures on the simulated
market: docs/models.md, "Leakage audit"). As ratios to the symbol's own trailing baseline they say how calm,
volatile or illiquid the symbol is *now compared with its normal*, which is the regime.

For each level feature ``x_t`` (> 0) at bar ``t``:

    rel_t = log x_t - b_{t-1},      b_t = b_{t-1} + a_t (log x_t - b_{t-1}),
    a_t = max(1 - 2^(-1/H), 1/n_t)

with ``n_t`` the number of defined values so far: the plain running mean of ``log x`` until it has seen about
``H / ln 2`` values, then an exponentially weighted mean with a half-life of ``H`` bars (a few sessions). The
warm-up matters: seeded with one value and moved at the slow rate, the baseline would keep the first window's
accident for days, and a constant offset per symbol is exactly the identity this module removes. The first
defined value gives ``rel = 0``; the baseline used at bar ``t`` only holds bars before ``t`` (point in time).
Undefined values (NaN, or <= 0 where a log is meaningless: a noise-dominated TSRV, a zero spread) give
``rel = NaN`` and leave the baseline alone. Units: natural-log ratio, dimensionless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class LevelBaseline:
    """EWMA baselines of ``log x`` for a fixed number of level features; picklable, O(features) per bar.

    Plain Python floats: with six features numpy's per-call overhead would cost more than the arithmetic, and
    this runs at every bar close of every symbol.
    """

    def __init__(self, n_features: int, halflife_bars: float) -> None:
        if halflife_bars <= 0:
            raise ValueError(f"halflife_bars must be > 0, got {halflife_bars}")
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_bars)
        self.log_level = [math.nan] * n_features
        self.count = [0] * n_features

    def relative(self, values: Sequence[float], update: bool = True) -> np.ndarray:
        """``log x - baseline`` for this bar's ``values`` [n]; with ``update``, then fold them into the baseline
        (a baseline never seeded yet gives NaN without ``update``)."""
        rel = [math.nan] * len(self.log_level)
        for j, x in enumerate(values):
            if not 0.0 < x < math.inf:  # NaN, <= 0 or inf: undefined, and the baseline stays
                continue
            lx = math.log(x)
            b = self.log_level[j]
            if b != b:  # not seeded yet (NaN)
                if update:
                    self.log_level[j], self.count[j] = lx, 1
                    rel[j] = 0.0
                continue
            rel[j] = lx - b
            if update:
                self.count[j] += 1
                self.log_level[j] = b + max(self.alpha, 1.0 / self.count[j]) * (lx - b)
        return np.array(rel)
