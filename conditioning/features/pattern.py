"""The 128-d pattern vector of the recent trajectory, and its outcome, for retrieval (PatternRAG).

Layout (version ``FEATURE_LAYOUT_VERSION``): the last ``N = 32`` bars, oldest first, each with 4 channels,
flattened bar-major (``vector[4 * b + c]``):

0. ``return``: the bar's close-to-close log return of the last price divided by the root mean square of the N
   returns (a pattern-local volatility), so the shape of the path, not its scale, is compared;
1. ``volume``: z-score over the N bars of ``log1p(V_b / mean V)``;
2. ``spread``: z-score over the N bars of the bar's time-weighted relative quoted spread (bars without a
   valid quote get 0, the mean);
3. ``intensity``: z-score over the N bars of ``log1p(n_b / mean n)``, ``n_b`` the bar's trade count.

Every channel is clipped to +-5 and is 0 where undefined (no history, zero dispersion). Each channel is
invariant to the price level, the volume scale and the trade rate, so patterns compare across symbols.

Outcome (``OUTCOME_NAMES``), known ``h = pattern_horizon_bars`` bars after the pattern's end ``T``:
``fwd_log_return = log P_{T+h} - log P_T`` and ``fwd_log_rv = log(max(sum_{b=1..h} r_{T+b}^2, 1e-12))``
from the same bar returns (the floor keeps a flat horizon finite: 1e-12 is a 1e-6 move).
"""

from __future__ import annotations

import math

import numpy as np

from conditioning.features.types import PATTERN_DIM

N_CHANNELS = 4
PATTERN_BARS = PATTERN_DIM // N_CHANNELS
CLIP = 5.0
RV_FLOOR = 1e-12


def _zscore_columns(x: np.ndarray) -> np.ndarray:
    """Column-wise z-scores of ``x [32, C]`` over the finite entries (population std); 0 where undefined, and
    a whole column 0 when it has fewer than 2 finite values or no dispersion. All columns in one pass: on 32
    rows numpy's per-call overhead outweighs the arithmetic, and this runs at every bar close of every symbol."""
    finite = np.isfinite(x)
    m = finite.sum(axis=0)  # [C]
    v = np.where(finite, x, 0.0)
    mean = v.sum(axis=0) / np.maximum(m, 1)
    d = np.where(finite, x - mean, 0.0)
    sd = np.sqrt((d * d).sum(axis=0) / np.maximum(m, 1))
    ok = (m >= 2) & (sd > 0.0)
    return np.where(ok, d / np.where(ok, sd, 1.0), 0.0)


def _log_ratio_to_mean(x: np.ndarray) -> np.ndarray:
    mean = x.mean()
    return np.log1p(x / mean) if mean > 0.0 else np.zeros_like(x)


def pattern_vector(
    returns: np.ndarray, volumes: np.ndarray, spreads: np.ndarray, n_trades: np.ndarray
) -> np.ndarray:
    """[128] float32 pattern of the last 32 bars (see the module docstring); inputs are [32] per-bar arrays.

    ``returns`` may hold NaN (no price yet), ``spreads`` NaN (no valid quote in the bar).
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (returns, volumes, spreads, n_trades)]
    if any(a.shape != (PATTERN_BARS,) for a in arrays):
        raise ValueError(f"pattern inputs must each have shape ({PATTERN_BARS},), got {[a.shape for a in arrays]}")
    r, v, s, n = arrays
    r = np.where(np.isfinite(r), r, 0.0)
    rms = math.sqrt(float(np.dot(r, r)) / PATTERN_BARS)
    channels = np.empty((PATTERN_BARS, N_CHANNELS))  # [32, 4]
    channels[:, 0] = r / rms if rms > 0.0 else r
    channels[:, 1:] = _zscore_columns(np.stack([_log_ratio_to_mean(v), s, _log_ratio_to_mean(n)], axis=1))
    return np.clip(channels, -CLIP, CLIP).astype(np.float32).ravel()


def pattern_outcome(log_price_end: float, log_price_horizon: float, horizon_returns: np.ndarray) -> np.ndarray:
    """[2] float32 ``(fwd_log_return, fwd_log_rv)`` (see the module docstring)."""
    rv = float(np.dot(horizon_returns, horizon_returns))
    return np.array([log_price_horizon - log_price_end, math.log(max(rv, RV_FLOOR))], dtype=np.float32)
