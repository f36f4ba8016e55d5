"""Intraday Amihud (2002) illiquidity over a window of bars.

Definition used here (one of the intraday variants in docs/reference.md):

    ILLIQ = 1e6 * mean_{b in bars with volume} |r_b| / DV_b

with ``r_b`` the log return of bar ``b`` from the previous traded bar's last trade price (or, for the first
traded bar of the window, from its own first trade, so that nothing before the window leaks in) to its last
trade price, and ``DV_b = sum price * size`` its dollar volume. Units: absolute log return per million USD
traded (Amihud's conventional x 1e6 scaling), per bar of ``bar_ns``. NaN when no bar of the window traded.

Reference: Amihud, Y. (2002). Illiquidity and stock returns: cross-section and time-series effects.
Journal of Financial Markets 5(1), 31-56.
"""

from __future__ import annotations

import math

import numpy as np

AMIHUD_SCALE = 1e6


def amihud(log_returns: np.ndarray, dollar_volumes: np.ndarray) -> float:
    """``1e6 * mean(|r_b| / DV_b)`` over bars with ``DV_b > 0`` (see the module docstring); NaN if none."""
    r = np.asarray(log_returns, dtype=np.float64)
    dv = np.asarray(dollar_volumes, dtype=np.float64)
    if r.shape != dv.shape:
        raise ValueError(f"log_returns and dollar_volumes differ in shape: {r.shape} vs {dv.shape}")
    traded = dv > 0.0
    if not traded.any():
        return math.nan
    return float(AMIHUD_SCALE * np.mean(np.abs(r[traded]) / dv[traded]))
