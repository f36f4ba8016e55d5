"""Vectorised batch reference of the window features: the oracle for :mod:`conditioning.features.state`.

Given one symbol's whole tick history (rows in event order) and a list of bar ends, it computes every window
at once with whole-array numpy: searchsorted window bounds, exact segment sums (``np.add.reduceat`` on
interleaved bounds, no running-sum cancellation), integrals of the piecewise-constant quoted spread, and one
``bincount`` over (window, bucket) pairs for the volume profile. It shares no summation code with the
streaming path, only the definitions (documented in ``realized``, ``liquidity``, ``spreads``,
``volume_profile`` and ``state``) and :func:`realized.choose_tsrv_k`, the modelling choice of K.
The SSR/LULD state and the pattern vector are not re-derived here (they have their own tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conditioning.features.columns import Ticks
from conditioning.features.liquidity import AMIHUD_SCALE
from conditioning.features.realized import choose_tsrv_k, pilot_k
from conditioning.features.state import FeatureParams
from conditioning.features.volume_profile import N_BUCKETS


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """Per-window features, ``[W]`` arrays (``[W, 10]``, ``[W, 3]``), same units as ``state.BarFeatures``."""

    window_end_ns: np.ndarray
    n_trades: np.ndarray
    n_quotes: np.ndarray
    rv: np.ndarray
    bpv: np.ndarray
    tsrv: np.ndarray
    tsrv_k: np.ndarray
    amihud: np.ndarray
    volume_profile: np.ndarray
    spread: np.ndarray
    mid_quote_prices: np.ndarray  # bool: realized measures from mid-quotes (no trade in the window)


def _segment_sums(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``sum(x[lo_w:hi_w])`` for every w (0 where ``hi_w <= lo_w``), each summed on its own."""
    out = np.zeros(lo.shape[0])
    ok = hi > lo
    if ok.any():
        idx = np.empty(2 * int(ok.sum()), dtype=np.intp)
        idx[0::2], idx[1::2] = lo[ok], hi[ok]
        out[ok] = np.add.reduceat(np.append(x, 0.0), idx)[0::2]
    return out


def _realized(ts: np.ndarray, logp: np.ndarray, starts: np.ndarray, ends: np.ndarray, params: FeatureParams):
    """RV, BPV, TSRV (eq. 55/64) and K for every window ``[start, end)`` of one price series."""
    a = np.searchsorted(ts, starts, "left")
    b = np.searchsorted(ts, ends, "left")
    n = b - a - 1  # returns per window
    r = np.diff(logp)
    rv = _segment_sums(r * r, a, b - 1)
    absr = np.abs(r)
    bp_sum = _segment_sums(absr[1:] * absr[:-1], a, b - 2)
    defined = n >= max(params.min_returns, 4)
    nan = np.full(n.shape, np.nan)
    n_safe = np.where(defined, n, 2)
    bpv = np.where(defined, (math.pi / 2) * n_safe / (n_safe - 1) * bp_sum, nan)

    def lag_sums(k: np.ndarray) -> np.ndarray:
        out = np.zeros(n.shape)
        for kk in np.unique(k[k > 0]):
            sel = k == kk
            d = logp[kk:] - logp[:-kk]
            out[sel] = _segment_sums(d * d, a[sel], b[sel] - kk)
        return out

    k = np.zeros(n.shape, dtype=np.int64)
    if params.tsrv_k is None:
        k0 = np.array([pilot_k(int(m)) if ok else 0 for m, ok in zip(n, defined, strict=True)])
        slow0 = lag_sums(k0)
        for w in np.flatnonzero(defined):
            nbar0 = (n[w] - k0[w] + 1) / k0[w]
            pilot = slow0[w] / k0[w] - nbar0 / n[w] * rv[w]
            k[w] = choose_tsrv_k(int(n[w]), float(rv[w]), float(pilot))[0]
    else:
        k[defined & (params.tsrv_k <= n // 2)] = params.tsrv_k
    slow = lag_sums(k)
    has_k = k > 0
    k_safe = np.where(has_k, k, 2).astype(np.float64)
    nn = np.where(has_k, n, 4).astype(np.float64)
    nbar = (nn - k_safe + 1) / k_safe
    tsrv = np.where(has_k, (slow / k_safe - nbar / nn * rv) / (1 - nbar / nn), nan)
    return np.where(defined, rv, nan), bpv, tsrv, k


def window_features(ticks: Ticks, window_ends: np.ndarray, params: FeatureParams) -> WindowFeatures:
    """Features of the windows ``[end - lookback, end)`` for every ``end`` in ``window_ends`` (bar grid)."""
    ends = np.asarray(window_ends, dtype=np.int64)
    starts = ends - params.lookback_ns
    tr = ticks.is_trade
    t_ts, t_p, t_s = ticks.ts_ns[tr], ticks.price[tr], ticks.size[tr]
    q_ts, bid, ask = ticks.ts_ns[~tr], ticks.bid[~tr], ticks.ask[~tr]
    ta, tb = np.searchsorted(t_ts, starts, "left"), np.searchsorted(t_ts, ends, "left")
    qa, qb = np.searchsorted(q_ts, starts, "left"), np.searchsorted(q_ts, ends, "left")
    n_trades = tb - ta

    # quotes: valid (two-sided, A > B), mid, relative spread
    with np.errstate(invalid="ignore"):
        valid = (bid > 0) & (ask > bid) & np.isfinite(ask)
    mid = np.where(valid, 0.5 * (bid + ask), np.nan)
    rel = np.where(valid, (ask - bid) / np.where(valid, mid, 1.0), 0.0)

    # realized measures: trades, else the mid at each change (windows without a trade)
    rv, bpv, tsrv, k = _realized(t_ts, np.log(t_p), starts, ends, params)
    mid_v, mid_ts = mid[valid], q_ts[valid]
    change = np.concatenate([[True], mid_v[1:] != mid_v[:-1]]) if mid_v.size else np.zeros(0, bool)
    mid_ts, mid_v = mid_ts[change], mid_v[change]
    no_trade = n_trades == 0
    use_mid = no_trade & (np.searchsorted(mid_ts, ends, "left") > np.searchsorted(mid_ts, starts, "left"))
    by_mid = _realized(mid_ts, np.log(mid_v), starts, ends, params)
    rv, bpv, tsrv, k = (np.where(no_trade, m, t) for m, t in zip(by_mid, (rv, bpv, tsrv, k), strict=True))

    grid0 = int(starts.min())
    n_bars = int((ends.max() - grid0) // params.bar_ns)
    g0 = (starts - grid0) // params.bar_ns  # first bar of each window on the grid
    g1 = g0 + params.lookback_bars
    if q_ts.size:
        spread = np.stack(
            [
                _quoted_tw(q_ts, valid, rel, starts, ends, params.quote_stale_ns),
                _effective_vw(ticks, valid, mid, ta, tb, params.quote_stale_ns),
                _mid_vol(q_ts, valid, mid, grid0, n_bars, g0, g1, params),
            ],
            axis=1,
        )
    else:
        spread = np.full((ends.size, 3), np.nan)

    return WindowFeatures(
        window_end_ns=ends,
        n_trades=n_trades,
        n_quotes=qb - qa,
        rv=rv,
        bpv=bpv,
        tsrv=tsrv,
        tsrv_k=k,
        amihud=_amihud(t_ts, t_p, t_s, grid0, n_bars, g0, g1, params),
        volume_profile=_volume_profiles(t_p, t_s, ta, tb),
        spread=spread,
        mid_quote_prices=use_mid,
    )


def _volume_profiles(p: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[W, 10] volume-at-price profiles via one bincount over all (window, trade) pairs."""
    w_count = a.shape[0]
    counts = b - a
    out = np.full((w_count, N_BUCKETS), np.nan)
    if counts.sum() == 0:
        return out
    wid = np.repeat(np.arange(w_count), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tidx = a[wid] + np.arange(wid.size) - offsets[wid]
    nonempty = counts > 0
    lo = np.full(w_count, np.nan)
    hi = np.full(w_count, np.nan)
    idx = np.empty(2 * int(nonempty.sum()), dtype=np.intp)
    idx[0::2], idx[1::2] = a[nonempty], b[nonempty]
    lo[nonempty] = np.minimum.reduceat(np.append(p, np.inf), idx)[0::2]
    hi[nonempty] = np.maximum.reduceat(np.append(p, -np.inf), idx)[0::2]
    pp = p[tidx]
    span = (hi - lo)[wid]
    flat = span == 0
    frac = (pp - lo[wid]) / np.where(flat, 1.0, span)
    bucket = np.where(flat, 0, np.minimum(np.floor(N_BUCKETS * frac).astype(np.int64), N_BUCKETS - 1))
    vol = np.bincount(wid * N_BUCKETS + bucket, weights=s[tidx], minlength=w_count * N_BUCKETS)
    total = np.bincount(wid, weights=s[tidx], minlength=w_count)
    out[nonempty] = (vol.reshape(w_count, N_BUCKETS) / np.where(total > 0, total, 1.0)[:, None])[nonempty]
    degenerate = nonempty & (hi == lo)
    out[degenerate] = 0.0
    out[degenerate, N_BUCKETS // 2 - 1 : N_BUCKETS // 2 + 1] = 0.5
    return out


def _amihud(t_ts, t_p, t_s, grid0: int, n_bars: int, g0, g1, params: FeatureParams) -> np.ndarray:
    """Amihud of every window from per-bar closes on the grid: the first traded bar of a window uses its open."""
    in_grid = (t_ts >= grid0) & (t_ts < grid0 + n_bars * params.bar_ns)
    g = (t_ts[in_grid] - grid0) // params.bar_ns
    gp, gs = t_p[in_grid], t_s[in_grid]
    traded = np.bincount(g, minlength=n_bars) > 0
    rows = np.arange(g.size)
    first = np.full(n_bars, g.size)
    last = np.full(n_bars, -1)
    np.minimum.at(first, g, rows)
    np.maximum.at(last, g, rows)
    safe_price = np.append(gp, 1.0)  # index g.size / -1 for untraded bars reads a harmless 1.0
    log_close = np.where(traded, np.log(safe_price[last]), np.nan)
    log_open = np.where(traded, np.log(safe_price[first]), np.nan)
    dv = np.bincount(g, weights=gp * gs, minlength=n_bars)
    prev = np.maximum.accumulate(np.where(traded, np.arange(n_bars), -1))
    prev = np.concatenate([[-1], prev[:-1]])  # previous traded bar, strictly before
    safe_dv = np.where(traded, dv, 1.0)
    with np.errstate(invalid="ignore"):
        r_prev = log_close - log_close[np.maximum(prev, 0)]
    term_prev = np.where(traded & (prev >= 0), np.abs(r_prev) / safe_dv, 0.0)
    term_open = np.where(traded, np.abs(log_close - log_open) / safe_dv, 0.0)
    next_traded = np.minimum.accumulate(np.where(traded, np.arange(n_bars), n_bars)[::-1])[::-1]
    f = np.append(next_traded, n_bars)[g0]  # first traded bar of each window
    has = f < g1
    total = _segment_sums(term_prev, f + 1, g1) + np.where(has, term_open[np.minimum(f, n_bars - 1)], 0.0)
    count = _segment_sums(traded.astype(np.float64), g0, g1)
    return np.where(has, AMIHUD_SCALE * total / np.where(has, count, 1.0), np.nan)


def _quoted_tw(q_ts, valid, rel, starts, ends, stale: int) -> np.ndarray:
    """Time-weighted relative quoted spread as ``(S(end) - S(start)) / (W(end) - W(start))`` with ``W(t)``/
    ``S(t)`` the time under a fresh valid quote / the spread integral up to ``t`` (durations in int64 ns)."""
    q_end = np.minimum(np.append(q_ts[1:], np.iinfo(np.int64).max), q_ts + stale)
    full = np.where(valid, q_end - q_ts, 0)
    cum_w = np.concatenate([[0], np.cumsum(full)])
    cum_s = np.concatenate([[0.0], np.cumsum(rel * full)])

    def integrals(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        j = np.searchsorted(q_ts, t, "left") - 1  # the last quote strictly before t, still running at t
        has = j >= 0
        js = np.maximum(j, 0)
        part = np.where(has & valid[js], np.clip(np.minimum(t, q_end[js]) - q_ts[js], 0, None), 0)
        return np.where(has, cum_w[js], 0) + part, np.where(has, cum_s[js], 0.0) + rel[js] * part

    w_end, s_end = integrals(ends)
    w_start, s_start = integrals(starts)
    time = w_end - w_start
    return np.where(time > 0, (s_end - s_start) / np.where(time > 0, time, 1), np.nan)


def _effective_vw(ticks: Ticks, valid, mid, ta, tb, stale: int) -> np.ndarray:
    """Volume-weighted ``2 |P - M| / M`` with the last quote row before each trade row, if valid and fresh."""
    tr = ticks.is_trade
    q_ord = np.cumsum(~tr) - 1  # ordinal of the last quote at or before each row
    lq = q_ord[tr]
    lq_safe = np.maximum(lq, 0)
    t_ts, t_p, t_s = ticks.ts_ns[tr], ticks.price[tr], ticks.size[tr]
    q_ts = ticks.ts_ns[~tr]
    matched = (lq >= 0) & valid[lq_safe] & (t_ts - q_ts[lq_safe] <= stale)
    m = np.where(matched, mid[lq_safe], 1.0)
    terms = np.where(matched, t_s * np.abs(t_p - m) / m, 0.0)
    volume = _segment_sums(np.where(matched, t_s, 0.0), ta, tb)
    return np.where(volume > 0, 2.0 * _segment_sums(terms, ta, tb) / np.where(volume > 0, volume, 1), np.nan)


def _mid_vol(q_ts, valid, mid, grid0: int, n_bars: int, g0, g1, params: FeatureParams) -> np.ndarray:
    """RMS of bar-to-bar log changes of the fresh valid end-of-bar mid, pairs inside each window."""
    bar_ends = grid0 + params.bar_ns * np.arange(1, n_bars + 1)
    j = np.searchsorted(q_ts, bar_ends, "left") - 1
    js = np.maximum(j, 0)
    fresh = (j >= 0) & valid[js] & (bar_ends - q_ts[js] <= params.quote_stale_ns)
    log_mid = np.where(fresh, np.log(np.where(fresh, mid[js], 1.0)), np.nan)
    d = np.diff(log_mid)  # d[i]: bar i -> bar i + 1
    ok = np.isfinite(d)
    count = _segment_sums(ok.astype(np.float64), g0, g1 - 1)
    ss = _segment_sums(np.where(ok, d, 0.0) ** 2, g0, g1 - 1)
    return np.where(count > 0, np.sqrt(ss / np.where(count > 0, count, 1)), np.nan)
