"""Market simulator: determinism, canonical invariants, staged SSR/LULD episodes, regime statistics."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

import numpy as np
import pyarrow.compute as pc
import pytest

from conditioning.features.ssr_luld import SsrLuldEvent, SsrLuldTracker
from conditioning.sim.market import (
    REGIMES,
    MarketConfig,
    iter_simulated_ticks,
    main,
    simulate_day,
    simulate_market,
)
from schemas.canonical import read_ticks, validate_ticks
from schemas.layout import SsrLuldState
from schemas.reference import read_reference
from schemas.session import session_mask


@pytest.fixture(scope="module")
def day():
    return simulate_day(n_symbols=20, seed=7)


@pytest.fixture(scope="module")
def two_days():
    return simulate_market(MarketConfig(n_symbols=3, seed=5, n_days=2))


def columns(table):
    return {name: table[name].to_numpy(zero_copy_only=False) for name in ("ts_ns", "price", "bid", "ask")} | {
        name: np.array(table[name].to_pylist()) for name in ("symbol", "kind")
    }


def test_same_seed_same_market_other_seed_other_market():
    a = simulate_day(n_symbols=3, seed=11, trades_per_day=300)
    b = simulate_day(n_symbols=3, seed=11, trades_per_day=300)
    c = simulate_day(n_symbols=3, seed=12, trades_per_day=300)
    assert a.ticks.equals(b.ticks) and a.reference == b.reference and a.stretches == b.stretches
    assert a.events == b.events
    assert not a.ticks.equals(c.ticks)


def test_canonical_time_ordered_inside_the_session(day):
    validate_ticks(day.ticks)
    ts = day.ticks["ts_ns"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert session_mask(ts).all()
    per_symbol = day.ticks.group_by("symbol").aggregate([("ts_ns", "count")])
    assert per_symbol.num_rows == 20
    assert pc.min(per_symbol["ts_ns_count"]).as_py() > 1_000  # default: thousands of ticks per symbol-day


def test_quotes_never_cross_and_trades_stay_inside_the_prevailing_spread(day):
    c = columns(day.ticks)
    quote = c["kind"] == "quote"
    assert np.all(c["bid"][quote] < c["ask"][quote])
    for symbol in np.unique(c["symbol"]):
        mine = c["symbol"] == symbol
        kind = c["kind"][mine]
        rows = np.arange(kind.size)
        prevailing = np.maximum.accumulate(np.where(kind == "quote", rows, -1))
        trades = kind == "trade"
        assert prevailing[trades].min() >= 0, symbol  # every trade has a quote before it
        price = c["price"][mine][trades]
        bid, ask = c["bid"][mine][prevailing[trades]], c["ask"][mine][prevailing[trades]]
        assert np.all((bid <= price) & (price <= ask)), symbol


def replay(tracker: SsrLuldTracker, table) -> None:
    """Feed one symbol's ticks to B's tracker."""
    for row in table.to_pylist():
        if row["kind"] == "trade":
            tracker.on_trade(row["ts_ns"], row["price"], row["size"])
        else:
            tracker.on_quote(row["ts_ns"], row["bid"] or 0.0, row["ask"] or 0.0)


def symbol_ticks(market, symbol):
    return market.ticks.filter(pc.equal(market.ticks["symbol"], symbol))


def tracker_for(market, symbol, events: list[SsrLuldEvent] | None = None) -> SsrLuldTracker:
    """B's tracker for ``symbol``, with the market's reference data; its transitions go to ``events``."""
    tracker = SsrLuldTracker(symbol, on_event=None if events is None else events.append)
    for row in market.reference:
        if row.symbol == symbol:
            tracker.on_reference(row.date, row.prev_close, row.tier)
    return tracker


def test_ssr_trigger_inside_the_staged_selloff_and_only_there(day):
    staged = {e.kind: e for e in day.events}
    selloff = staged["ssr_selloff"]
    triggers = {}
    for symbol in sorted({r.symbol for r in day.reference}):
        events: list[SsrLuldEvent] = []
        replay(tracker_for(day, symbol, events), symbol_ticks(day, symbol))
        triggers[symbol] = [e for e in events if e.kind == "ssr_trigger"]
    assert [s for s, found in triggers.items() if found] == [selloff.symbol]
    assert selloff.start_ns <= triggers[selloff.symbol][0].ts_ns < selloff.end_ns


def test_luld_limit_state_becomes_a_pause_then_reopens(day):
    staged = {e.kind: e for e in day.events}
    limit, pause, reopening = staged["luld_limit_state"], staged["luld_pause"], staged["reopening"]
    symbol = limit.symbol
    ticks = symbol_ticks(day, symbol)
    events: list[SsrLuldEvent] = []
    tracker = tracker_for(day, symbol, events)
    a_minute_after = reopening.start_ns + 60 * 10**9
    replay(tracker, ticks.filter(pc.less(ticks["ts_ns"], a_minute_after)))
    kinds = [(e.kind, e.ts_ns) for e in events if e.kind.startswith(("limit", "pause"))]
    assert kinds == [("limit_enter", limit.start_ns), ("pause_start", pause.start_ns), ("pause_end", pause.end_ns)]
    c = columns(ticks)
    trades = c["ts_ns"][c["kind"] == "trade"]
    assert not np.any((trades >= limit.start_ns) & (trades < reopening.start_ns))  # none in limit state or pause
    first_after = c["price"][(c["kind"] == "trade") & (c["ts_ns"] >= reopening.start_ns)][0]
    assert first_after == reopening.price
    # The NBB sat on the upper band to the cent (the band itself is not penny-rounded).
    bids = c["bid"][(c["kind"] == "quote") & (c["ts_ns"] >= limit.start_ns) & (c["ts_ns"] < pause.end_ns)]
    assert np.all(np.abs(bids - limit.price) <= 0.005)
    assert tracker.state_at(a_minute_after) is SsrLuldState.NORMAL


def test_ssr_carries_over_to_the_next_day(two_days):
    selloff = next(e for e in two_days.events if e.kind == "ssr_selloff")
    tracker = tracker_for(two_days, selloff.symbol)
    replay(tracker, symbol_ticks(two_days, selloff.symbol))
    dates = sorted({r.date for r in two_days.reference})
    assert len(dates) == 2
    day2 = [r for r in two_days.reference if r.date == dates[1]]
    closes = {
        s: symbol_ticks(two_days, s).filter(pc.equal(symbol_ticks(two_days, s)["kind"], "trade"))
        for s in (r.symbol for r in day2)
    }
    first_day_end = int(np.datetime64(f"{dates[1]}T00:00", "ns").astype(np.int64))
    for row in day2:  # the next prior close is the last trade of the first day
        trades = closes[row.symbol]
        first_day = trades.filter(pc.less(trades["ts_ns"], first_day_end))
        assert row.prev_close == pytest.approx(first_day["price"][-1].as_py(), abs=5e-5)
    assert tracker.state_at(int(two_days.ticks["ts_ns"][-1].as_py())) is SsrLuldState.SSR_ACTIVE


def stretch_statistics(market):
    """Per regime: lists of (quote-mid RV per second, trades per second, mean relative spread,
    |net mid log return| / sqrt(seconds), variance ratio of 300-s vs 1-s mid returns)."""
    c = columns(market.ticks)
    out = defaultdict(list)
    for s in market.stretches:
        window = (c["symbol"] == s.symbol) & (c["ts_ns"] >= s.start_ns) & (c["ts_ns"] < s.end_ns)
        quote, trade = window & (c["kind"] == "quote"), window & (c["kind"] == "trade")
        seconds = (s.end_ns - s.start_ns) // 10**9
        mid = np.log((c["bid"][quote] + c["ask"][quote]) / 2)
        on_grid = np.searchsorted(c["ts_ns"][quote], s.start_ns + np.arange(seconds) * 10**9, side="right") - 1
        grid = mid[on_grid[on_grid >= 0]]
        r1, r300 = np.diff(grid), grid[300::300] - grid[:-300:300]
        out[s.regime].append(
            (
                np.sum(np.diff(mid) ** 2) / seconds,
                trade.sum() / seconds,
                np.mean((c["ask"][quote] - c["bid"][quote]) / np.exp(mid)),
                abs(mid[-1] - mid[0]) / np.sqrt(seconds),
                np.var(r300) / (300 * np.var(r1)),
            )
        )
    return {regime: np.median(np.array(values), axis=0) for regime, values in out.items()}


def test_stretches_differ_as_designed():
    market = simulate_day(n_symbols=20, seed=11, scenarios=False)
    assert {s.regime for s in market.stretches} == set(REGIMES)
    stats = stretch_statistics(market)
    rv, rate, spread, drift, variance_ratio = (
        dict(zip(stats, col, strict=True)) for col in zip(*stats.values(), strict=True)
    )
    # designed: volatility x5 (variance x25), tick rounding of the mid shrinks the ratio a little
    assert rv["volatile"] > 10 * rv["calm"]
    # designed: a sixth of the activity, spreads of 4-10 ticks instead of 1
    assert rate["illiquid"] < 0.3 * rate["calm"] and spread["illiquid"] > 3 * spread["calm"]
    # designed: 2%/h drift; a calm walk has no drift
    assert drift["trending"] > 3 * drift["calm"]
    # designed: OU with a 40-s half-life, so 5-minute moves are much smaller than 300 one-second moves
    assert variance_ratio["mean_reverting"] < 0.5 * variance_ratio["calm"]


def test_chunks_are_time_ordered_and_bounded():
    config = MarketConfig(n_symbols=50, seed=3, chunk_s=60, trades_per_day=1_000)
    chunks = list(itertools.islice(iter_simulated_ticks(config), 5))
    assert len(chunks[0].reference) == 50 and all(not c.reference for c in chunks[1:])
    ends = [c.ticks["ts_ns"].to_numpy() for c in chunks]
    assert all(a[-1] <= b[0] for a, b in itertools.pairwise(ends))
    assert all(e[-1] - e[0] < 60 * 10**9 for e in ends)


def test_config_is_checked():
    with pytest.raises(ValueError, match="n_symbols=0"):
        MarketConfig(n_symbols=0)
    for not_full in (dt.date(2024, 3, 9), dt.date(2024, 7, 4), dt.date(2024, 11, 29)):  # Sat, holiday, early close
        with pytest.raises(ValueError, match="a trading day with a full session"):
            MarketConfig(start=not_full)


def test_the_days_are_the_exchange_s_full_sessions():
    # From Wed 2024-11-27: Thanksgiving (11-28) is a holiday, 11-29 closes at 13:00, then the weekend.
    config = MarketConfig(
        n_symbols=2, seed=1, start=dt.date(2024, 11, 27), n_days=2, trades_per_day=50, scenarios=False
    )
    dates = sorted({r.date for r in simulate_market(config).reference})
    assert dates == [dt.date(2024, 11, 27), dt.date(2024, 12, 2)]


def test_main_writes_readable_files(tmp_path, capsys):
    out, ref = tmp_path / "ticks.parquet", tmp_path / "ref.csv"
    main(["--symbols", "3", "--seed", "7", "--trades-per-day", "200", "--out", str(out), "--reference", str(ref)])
    assert read_ticks(out).num_rows > 0 and len(read_reference(ref)) == 3
    assert "luld_pause SIM00001" in capsys.readouterr().out
