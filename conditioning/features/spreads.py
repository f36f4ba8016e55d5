"""The three spread-dynamics features of a window, and the quote filter they share.

With ``B``/``A`` the national best bid/offer and ``M = (B + A) / 2`` (R ``highfrequency::getLiquidityMeasures``
conventions):

- ``spread_quoted_rel_tw``: time-weighted relative quoted spread ``sum (A - B)/M * dt / sum dt`` over the time
  the window spent under a valid quote (dimensionless; 1e-4 = 1 bp).
- ``spread_effective_rel_vw``: volume-weighted relative effective spread ``sum size * 2 |P - M| / M / sum size``
  over trades with a valid, fresh prevailing quote. ``2 D (P - M) / M`` with the trade sign ``D`` from the
  quote rule is exactly ``2 |P - M| / M``, and a trade at the mid contributes 0 under the quote rule and
  Lee-Ready (1991) alike, so no signing is needed. The prevailing quote is the last one before the trade in
  event order, without the 5 s lag of Lee-Ready: with millisecond stamps no lag is best (Bessembinder 2003,
  Holden & Jacobsen 2014).
- ``spread_mid_vol``: volatility of the mid-quote per bar, ``sqrt(mean_b (log M_b - log M_{b-1})^2)`` over
  consecutive bars of the window whose end-of-bar mids ``M_b`` are both valid (log-return units per bar).

Quote filter (Holden & Jacobsen 2014): a quote is valid when both sides are present (> 0, finite) and
``A > B`` (crossed and locked NBBOs are dropped). A valid quote counts for at most ``quote_stale_ns`` after
its timestamp: past that it is stale (a feed gap, the overnight break), it stops accruing time weight and
prices no trade; an invalid quote ends the previous quote's time weight at once.

References: Lee, C. & Ready, M. (1991), J. Finance 46(2); Bessembinder, H. (2003), J. Financial Markets 6(3);
Holden, C. W. & Jacobsen, S. (2014), J. Finance 69(4).
"""

from __future__ import annotations

import math

import numpy as np

SPREAD_FEATURE_NAMES = ("spread_quoted_rel_tw", "spread_effective_rel_vw", "spread_mid_vol")


def is_valid_quote(bid: float, ask: float) -> bool:
    """Two-sided, finite, neither crossed nor locked (NaN sides compare False and fail)."""
    return 0.0 < bid < ask < math.inf


def mid_quote_volatility(log_mids: np.ndarray) -> float:
    """``sqrt(mean((log M_b - log M_{b-1})^2))`` over consecutive finite end-of-bar log mids; NaN if none."""
    x = np.asarray(log_mids, dtype=np.float64)
    d = x[1:] - x[:-1]  # np.diff without its per-call overhead (this runs at every bar close)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    return math.sqrt(float(np.dot(d, d)) / d.size)
