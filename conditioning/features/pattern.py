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

from schemas.layout import PATTERN_DIM

N_CHANNELS = 4
PATTERN_BARS = PATTERN_DIM // N_CHANNELS
CLIP = 5.0
RV_FLOOR = 1e-12


def _zscore_columns(x: np.ndarray) -> np.ndarray:
    """Column-wise z-scores of ``x [32, C]`` over the finite entries (population std); 0 where undefined, and
    a whole column 0 when it has fewer than 2 finite values or no dispersion. All columns in one pass: on 32
    rows numpy's per-call overhead outweighs the arithmetic, and this runs at every bar close of every symbol."""
    finite = np.isfinite(x)
    m = np.maximum(finite.sum(axis=0), 1)  # [C]; a column without a finite value is 0 whatever m
    mean = np.where(finite, x, 0.0).sum(axis=0) / m
    d = np.where(finite, x - mean, 0.0)
    sd = np.sqrt((d * d).sum(axis=0) / m)
    ok = (m >= 2) & (sd > 0.0)
    return np.where(ok, d / np.where(ok, sd, 1.0), 0.0)


def _log_ratio_to_mean(x: np.ndarray, out: np.ndarray) -> None:
    """``out = log1p(x / mean(x))``, or 0 when the mean is not positive (no volume, no trade in 32 bars)."""
    mean = x.sum() / x.shape[0]  # np.mean's own formula, without its per-call overhead
    if mean > 0.0:
        np.log1p(x / mean, out=out)
    else:
        out[:] = 0.0


def pattern_vector(bars: np.ndarray) -> np.ndarray:
    """[128] float32 pattern of the last 32 bars (see the module docstring) from ``bars [32, 4]``, oldest bar
    first, columns in channel order: the bar's return, volume, spread and trade count.

    Returns may be NaN (no price yet), spreads NaN (no valid quote in the bar). Bar-major like the output, so
    each channel is one column and the vector is one ``ravel``.
    """
    x = np.asarray(bars, dtype=np.float64)
    if x.shape != (PATTERN_BARS, N_CHANNELS):
        raise ValueError(f"pattern input must have shape ({PATTERN_BARS}, {N_CHANNELS}), got {x.shape}")
    channels = np.empty((PATTERN_BARS, N_CHANNELS))  # [32, 4]
    r = np.where(np.isfinite(x[:, 0]), x[:, 0], 0.0)
    rms = math.sqrt(float(np.dot(r, r)) / PATTERN_BARS)
    channels[:, 0] = r / rms if rms > 0.0 else r
    _log_ratio_to_mean(x[:, 1], channels[:, 1])
    channels[:, 2] = x[:, 2]
    _log_ratio_to_mean(x[:, 3], channels[:, 3])
    channels[:, 1:] = _zscore_columns(channels[:, 1:])
    return np.clip(channels, -CLIP, CLIP, out=np.empty((PATTERN_BARS, N_CHANNELS), dtype=np.float32)).ravel()


def pattern_outcome(log_price_end: float, log_price_horizon: float, horizon_returns: np.ndarray) -> np.ndarray:
    """[2] float32 ``(fwd_log_return, fwd_log_rv)`` (see the module docstring)."""
    rv = float(np.dot(horizon_returns, horizon_returns))
    return np.array([log_price_horizon - log_price_end, math.log(max(rv, RV_FLOOR))], dtype=np.float32)
