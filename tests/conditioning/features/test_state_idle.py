"""SymbolFeatures' cheap paths: idle bars closed at once (the dataflow's overnight catch-up), the window FIFOs.

The streaming == batch tests close every bar one call at a time; here the same streams are closed the way the
dataflow closes them across a gap (one ``close_bar`` to the next tick's bar), and every record both schedules
share must be identical, bit for bit: the cheap path is the slow one's result, not an approximation of it.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from conditioning.features.batch import Ticks
from conditioning.features.state import FeatureParams, SymbolFeatures, _Fifo, replay

from .conftest import NS, T0, synthetic_ticks

MIN = 60 * NS
PARAMS = FeatureParams(bar_ns=MIN, lookback_ns=10 * MIN, pattern_horizon_bars=3)


def with_gap(t: Ticks, after_min: int, gap_min: int) -> Ticks:
    """``t`` with every tick from ``after_min`` on shifted ``gap_min`` minutes later (a night without ticks)."""
    ts = np.where(t.ts_ns >= T0 + after_min * MIN, t.ts_ns + gap_min * MIN, t.ts_ns)
    return Ticks(ts, t.is_trade, t.price, t.size, t.bid, t.bid_size, t.ask, t.ask_size)


def dataflow_replay(sf: SymbolFeatures, t: Ticks) -> list:
    """Close bars as the dataflow does after a session: one ``close_bar`` to the next tick's bar start when
    more than one bar end passed without a tick, otherwise one call per bar end."""
    bar_ns = sf.params.bar_ns
    out = []
    next_end = int(t.ts_ns[0]) - int(t.ts_ns[0]) % bar_ns + bar_ns
    for i in range(t.ts_ns.size):
        ts = int(t.ts_ns[i])
        if ts >= next_end + bar_ns:  # a gap: catch up in one call
            next_end = ts - ts % bar_ns
            out.append(sf.close_bar(next_end))
            next_end += bar_ns
        elif ts >= next_end:
            out.append(sf.close_bar(next_end))
            next_end += bar_ns
        if t.is_trade[i]:
            sf.on_trade(ts, float(t.price[i]), float(t.size[i]))
        else:
            sf.on_quote(ts, float(t.bid[i]), float(t.bid_size[i]), float(t.ask[i]), float(t.ask_size[i]))
    out.append(sf.close_bar(next_end))
    return out


def assert_same_record(a, b, *, matured: bool = True) -> None:
    assert (a.window_end_ns, a.n_trades, a.n_quotes, a.ssr_luld_state, a.flags) == (
        b.window_end_ns,
        b.n_trades,
        b.n_quotes,
        b.ssr_luld_state,
        b.flags,
    )
    np.testing.assert_array_equal([a.rv, a.tsrv, a.bpv, a.amihud], [b.rv, b.tsrv, b.bpv, b.amihud])
    np.testing.assert_array_equal(a.regime_features, b.regime_features)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    if not matured:
        return
    assert [(p.end_ns, p.outcome_end_ns) for p in a.matured] == [(p.end_ns, p.outcome_end_ns) for p in b.matured]
    for p, q in zip(a.matured, b.matured, strict=True):
        np.testing.assert_array_equal(p.vector, q.vector)
        np.testing.assert_array_equal(p.outcome, q.outcome)


@pytest.mark.parametrize(("seed", "gap_min"), [(1, 7), (2, 45), (3, 24 * 60)])
def test_closing_idle_bars_at_once_equals_closing_them_one_by_one(seed: int, gap_min: int) -> None:
    # gaps shorter than the window, longer than the window, longer than the pattern history
    t = with_gap(synthetic_ticks(seed, minutes=90), after_min=60, gap_min=gap_min)
    every = replay(SymbolFeatures("SYM", PARAMS), t)
    jumped = dataflow_replay(SymbolFeatures("SYM", PARAMS), t)
    assert len(jumped) <= len(every) - gap_min + 1  # the gap (and the built-in silence) closed in one call
    by_end = {b.window_end_ns: b for b in every}
    for b in jumped:
        assert_same_record(by_end[b.window_end_ns], b, matured=False)
    # Patterns: one per close call, so the gap's calls add patterns of their own; those both schedules made
    # mature identically (due bars inside the gap included).
    patterns = {p.end_ns: p for b in every for p in b.matured}
    matured = [p for b in jumped for p in b.matured]
    assert len(matured) > 10
    for p in matured:
        q = patterns[p.end_ns]
        assert p.outcome_end_ns == q.outcome_end_ns
        np.testing.assert_array_equal(p.vector, q.vector)
        np.testing.assert_array_equal(p.outcome, q.outcome)


def test_a_long_idle_stretch_costs_the_window_not_its_length(monkeypatch) -> None:
    sf = SymbolFeatures("SYM", PARAMS)
    replay(sf, synthetic_ticks(4, minutes=60))
    full_closes = []
    monkeypatch.setattr(sf, "_close_open_bar", lambda f=sf._close_open_bar: full_closes.append(1) or f())
    pushes = []
    monkeypatch.setattr(sf, "_push_bar", lambda row, f=sf._push_bar: pushes.append(1) or f(row))
    end = sf._bar_end + 10**6 * MIN  # ~2 years of empty bars
    b = sf.close_bar(end)
    assert len(full_closes) <= PARAMS.pattern_horizon_bars + PARAMS.quote_stale_ns // MIN + 1
    assert len(pushes) <= len(full_closes) + PARAMS.lookback_bars
    assert b.n_trades == 0 and b.n_quotes == 0 and np.isnan(b.rv) and len(sf._bars) == PARAMS.lookback_bars
    assert len(sf._trades) == 0 and len(sf._mids) == 0
    assert {"few_obs", "no_valid_quote"} <= set(b.flags)
    # the next bars of the idle stretch reuse the pattern vector, never the same array
    c = sf.close_bar(end + MIN)
    np.testing.assert_array_equal(b.pattern, c.pattern)
    assert b.pattern is not c.pattern


def test_fifo_keeps_the_window_contiguous_and_bounded() -> None:
    f = _Fifo(2, 4)
    expected: list[float] = []
    rng = np.random.default_rng(0)
    for step in range(1300):
        burst = step < 300  # a busy stretch, then a quiet one of at most 5 live rows
        k = int(rng.integers(0, 40)) if burst else int(rng.integers(0, 3))
        block = rng.random(k).tolist()
        f.append_block(k, block, [2 * x for x in block])
        expected += block
        drop = min(len(expected), int(rng.integers(0, 40))) if burst else max(0, len(expected) - 5)
        f.drop(drop)
        expected = expected[drop:]
        np.testing.assert_array_equal(f.column(0), expected)
        np.testing.assert_array_equal(f.column(1), 2 * np.array(expected))
    assert f._data.shape[1] <= 2 * (5 + 2)  # shrunk back after the burst
    restored = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(restored.column(0), f.column(0))
    assert len(pickle.dumps(f)) < 1000 + 16 * len(f)  # the spare capacity is not pickled


def test_replay_helper_matches_dataflow_replay_without_gaps() -> None:
    t = synthetic_ticks(5, minutes=30)
    a = replay(SymbolFeatures("SYM", PARAMS), t)
    b = dataflow_replay(SymbolFeatures("SYM", PARAMS), t)
    assert [x.window_end_ns for x in a] == [x.window_end_ns for x in b]
