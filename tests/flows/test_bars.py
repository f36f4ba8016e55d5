"""Per-symbol event-time logic: reordering within the allowed lateness, late ticks dead-lettered, bars closed
by ticks, heartbeats and end of input, the session filter, snapshots."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np

from conditioning.features.batch import Ticks
from conditioning.features.state import BarFeatures, SymbolFeatures
from conditioning.sim.market import MarketConfig, simulate_market
from flows.bars import Heartbeat, SymbolLogic, TickBlock, feature_params
from flows.config import PipelineConfig, SessionConfig
from schemas.records import DeadLetter
from schemas.session import CalendarOverrides, new_york_ns
from schemas.ticks import Quote, Reference, Status, Trade

OPEN = 1_514_903_400_000_000_000  # 2018-01-02 09:30:00 ET
S = 1_000_000_000
MIN = 60 * S


def cfg(**over) -> PipelineConfig:
    base = dict(bar_ms=60_000, lookback_s=1800, allowed_lateness_ms=2_000)
    return PipelineConfig(**(base | over))


def trade(t_ns: int, price: float = 100.0) -> Trade:
    return Trade(symbol="AAA", ts_ns=t_ns, price=price, size=100)


def quote(t_ns: int) -> Quote:
    return Quote(symbol="AAA", ts_ns=t_ns, bid=99.99, bid_size=100, ask=100.01, ask_size=100)


def feed(logic: SymbolLogic, items) -> list:
    out = []
    for item in items:
        emitted, _ = logic.on_item([item])
        out.extend(emitted)
    return out


def bars(out) -> list[BarFeatures]:
    return [x for x in out if isinstance(x, BarFeatures)]


def test_out_of_order_within_lateness_is_reordered_not_late():
    logic = SymbolLogic(cfg())
    out = feed(logic, [trade(OPEN + 10 * S), trade(OPEN + 9 * S), trade(OPEN + 11 * S)])
    assert not [x for x in out if isinstance(x, DeadLetter)]
    out += feed(logic, [trade(OPEN + MIN + 5 * S)])  # watermark passes the first bar's end
    (bar,) = bars(out)
    assert bar.window_end_ns == OPEN + MIN and bar.n_trades == 3


def test_late_tick_is_dead_lettered_with_reason():
    logic = SymbolLogic(cfg())
    out = feed(logic, [trade(OPEN + 10 * S), trade(OPEN + 20 * S), trade(OPEN + 12 * S)])
    dead = [x for x in out if isinstance(x, DeadLetter)]
    assert len(dead) == 1 and dead[0].reason == "late" and dead[0].key == "AAA"
    assert Trade.model_validate_json(dead[0].raw) == trade(OPEN + 12 * S)  # the tick itself is kept


def test_reference_published_ahead_neither_advances_the_clock_nor_is_late():
    logic = SymbolLogic(cfg())
    day3 = Reference(symbol="AAA", ts_ns=OPEN + 2 * 86_400 * S, prev_close=50.0, tier=2, date=dt.date(2018, 1, 4))
    day1 = Reference(symbol="AAA", ts_ns=OPEN - 600 * S, prev_close=100.0, tier=1, date=dt.date(2018, 1, 2))
    out = feed(logic, [day3, trade(OPEN + S), day1, trade(OPEN + 30 * S)])
    assert not [x for x in out if isinstance(x, DeadLetter)]
    # the 2018-01-02 prior close applies: a sale at -10% triggers SSR on day 1
    out = feed(logic, [trade(OPEN + 40 * S, 90.0), trade(OPEN + 2 * MIN)])
    assert [b.ssr_luld_state.name for b in bars(out)] == ["SSR_ACTIVE"]


def test_tick_at_bar_end_belongs_to_next_bar():
    logic = SymbolLogic(cfg(allowed_lateness_ms=0))
    out = feed(logic, [trade(OPEN + 1 * S), trade(OPEN + MIN), trade(OPEN + 2 * MIN)])
    assert [b.n_trades for b in bars(out)] == [1, 2]  # trailing window: 1, then 1 + 1


def test_heartbeat_closes_bars_of_a_quiet_symbol():
    logic = SymbolLogic(cfg())
    out = feed(logic, [trade(OPEN + 1 * S)])
    assert not bars(out)
    beat = Heartbeat("AAA", OPEN + MIN, 1)
    out = feed(logic, [beat])
    assert [b.window_end_ns for b in bars(out)] == [OPEN + MIN]
    assert out[-1] is beat  # passed on behind the bars it closed (the inference step's event-time clock)
    # empty bars after it are not emitted
    assert not bars(feed(logic, [Heartbeat("AAA", OPEN + 5 * MIN, 1)]))


def test_patterns_maturing_in_quiet_bars_ride_on_the_next_emitted_bar():
    c = cfg(pattern_horizon_bars=2)
    logic = SymbolLogic(c)
    oracle = SymbolFeatures("AAA", feature_params(c))  # every bar closed, none dropped
    quiet = range(45, 53)
    out, expected = [], []
    for m in range(60):
        if m not in quiet:
            tick = trade(OPEN + m * MIN + S, price=100.0 + 0.01 * (m % 3))
            oracle.on_trade(tick.ts_ns, tick.price, tick.size)
            out += feed(logic, [tick])
        out += feed(logic, [Heartbeat("AAA", OPEN + (m + 1) * MIN, 1)])
        expected += oracle.close_bar(OPEN + (m + 1) * MIN).matured
    emitted = bars(out)
    assert [b.window_end_ns for b in emitted] == [OPEN + (m + 1) * MIN for m in range(60) if m not in quiet]
    carried = [(p.end_ns, p.outcome_end_ns) for b in emitted for p in b.matured]
    assert carried == [(p.end_ns, p.outcome_end_ns) for p in expected] and len(carried) > 20
    # the ones that matured while the symbol was quiet came with its next bar, stamped with when they did
    after_gap = next(b for b in emitted if b.window_end_ns > OPEN + quiet[-1] * MIN)
    assert len(after_gap.matured) > 1
    assert all(p.outcome_end_ns <= after_gap.window_end_ns for p in after_gap.matured)


def test_patterns_whose_outcome_runs_past_the_close_are_dropped():
    c = cfg(pattern_horizon_bars=5)
    logic = SymbolLogic(c)
    oracle = SymbolFeatures("AAA", feature_params(c))
    close, next_open = OPEN + 390 * MIN, OPEN + 24 * 60 * MIN
    out, expected = [], []
    for m in range(390):
        tick = trade(OPEN + m * MIN + S, price=100.0 + 0.01 * (m % 3))
        oracle.on_trade(tick.ts_ns, tick.price, tick.size)
        out += feed(logic, [tick, Heartbeat("AAA", OPEN + (m + 1) * MIN, 1)])
        expected += oracle.close_bar(OPEN + (m + 1) * MIN).matured
    # next morning: the feature state fills the night with empty bars, in which the last patterns mature
    out += feed(logic, [trade(next_open + S), Heartbeat("AAA", next_open + MIN, 1)])
    expected += oracle.close_bar(next_open).matured
    late = [p for p in expected if p.outcome_end_ns > close]
    assert len(late) == 5  # the patterns ending in the session's last 5 bars
    assert [p.end_ns for b in bars(out) for p in b.matured] == [p.end_ns for p in expected if p not in late]


def test_halted_symbol_keeps_emitting_its_state():
    logic = SymbolLogic(cfg())
    feed(logic, [trade(OPEN + 1 * S), Status(symbol="AAA", ts_ns=OPEN + 2 * S, halted=True)])
    out = feed(logic, [Heartbeat("AAA", OPEN + 4 * MIN, 1)])
    states = [b.ssr_luld_state.name for b in bars(out)]
    assert states == ["HALTED"] * 4


def test_eof_flushes_pending_and_closes_last_bar():
    logic = SymbolLogic(cfg())
    out = feed(logic, [trade(OPEN + 1 * S), quote(OPEN + 61 * S), trade(OPEN + 62 * S)])
    assert [b.window_end_ns for b in bars(out)] == [OPEN + MIN]  # watermark 62 s - 2 s lateness
    out, _ = logic.on_eof()
    (last,) = bars(out)
    assert last.window_end_ns == OPEN + 2 * MIN and last.n_trades == 2 and last.n_quotes == 1


def test_session_filter_skips_and_rolls_over_the_night():
    # ticks hours apart with no clock in between: let them all count as plausible (test_bad_input.py holds
    # the far-ahead ones)
    night = 2 * 24 * 3600 * 1000
    logic = SymbolLogic(cfg(max_ahead_ms=night))
    pre_open = OPEN - 10 * MIN
    day2 = OPEN + 24 * 3600 * S
    out = feed(logic, [trade(pre_open), trade(OPEN + 5 * S), trade(OPEN + 390 * MIN - S), trade(day2 + S)])
    out += logic.on_eof()[0]
    ends = [b.window_end_ns for b in bars(out)]
    assert ends == [OPEN + MIN, OPEN + 390 * MIN, day2 + MIN]
    logic2 = SymbolLogic(cfg(max_ahead_ms=night, session=SessionConfig(regular_hours_only=False)))
    out2 = feed(logic2, [trade(pre_open), trade(OPEN + 5 * S)]) + logic2.on_eof()[0]
    assert [b.window_end_ns for b in bars(out2)] == [pre_open + MIN - pre_open % MIN, OPEN + MIN]


def test_session_filter_follows_the_exchange_calendar_and_the_overrides():
    wed, thu, fri, mon = (
        new_york_ns(dt.date(2024, m, d), dt.time(9, 30)) for m, d in ((11, 27), (11, 28), (11, 29), (12, 2))
    )
    week = 6 * 24 * 3600 * 1000
    # Thanksgiving (Thu) has no session; Fri closes at 13:00 ET (3.5 h after the open)
    items = [trade(wed + 5 * S), trade(thu + 60 * MIN), trade(fri + 209 * MIN), trade(fri + 240 * MIN), trade(mon + S)]
    logic = SymbolLogic(cfg(max_ahead_ms=week))
    out = feed(logic, items) + logic.on_eof()[0]
    assert [b.window_end_ns for b in bars(out)] == [wed + MIN, fri + 210 * MIN, mon + MIN]
    # the same with Mon 12-02 closed and Wed 11-27 an early close by the config's overrides
    closed = SessionConfig(
        overrides=CalendarOverrides(closed=(dt.date(2024, 12, 2),), early_closes=(dt.date(2024, 11, 27),))
    )
    logic = SymbolLogic(cfg(max_ahead_ms=week, session=closed))
    out = feed(logic, [trade(wed + 5 * S), trade(wed + 240 * MIN), trade(mon + S)]) + logic.on_eof()[0]
    assert [b.window_end_ns for b in bars(out)] == [wed + MIN]
    restored = pickle.loads(pickle.dumps(logic.snapshot()))
    assert restored.features.params.calendar is logic.calendar  # the snapshot carries the overrides only


def test_snapshot_round_trip_continues_identically():
    items = [trade(OPEN + i * 7 * S, 100 + (i % 5) / 10) for i in range(40)]
    a = SymbolLogic(cfg())
    out_a = feed(a, items)
    b = SymbolLogic(cfg())
    out_b = feed(b, items[:17])
    b = SymbolLogic(cfg(), state=pickle.loads(pickle.dumps(b.snapshot())))
    out_b += feed(b, items[17:])
    assert [x.window_end_ns for x in bars(out_a)] == [x.window_end_ns for x in bars(out_b)]
    assert [x.tsrv for x in bars(out_a)] == [x.tsrv for x in bars(out_b)]


def blocks_of(market, symbol: str, cuts: list[int]) -> list[TickBlock]:
    t = Ticks.from_canonical(market.ticks, symbol)
    return [TickBlock(symbol, t.rows(a, b)) for a, b in zip(cuts[:-1], cuts[1:], strict=False)]


def test_a_block_gives_what_its_ticks_give():
    # SIM00001 has the LULD limit state and pause, SIM00000 the SSR trigger: blocks of 37 rows (many cross a
    # bar end), a heartbeat at every bar end as the file clock sends them, two blocks swapped (the later one
    # arrives first: the other is then older than the symbol's newest tick and goes tick by tick), a snapshot
    # round trip half way; the ticks of the same blocks one by one must give the same bars, bit for bit. The
    # blocks come one per call, and 7 items per call, as a source batch brings them (a bar's rows from several
    # blocks then go to the feature state as one run).
    market = simulate_market(MarketConfig(n_symbols=2, seed=3, trades_per_day=2000))
    for symbol in ("SIM00000", "SIM00001"):
        ref = next(r for r in market.reference if r.symbol == symbol)
        n = int(np.sum(np.asarray(market.ticks["symbol"].to_pylist()) == symbol))
        blocks = blocks_of(market, symbol, [*range(0, n, 37), n])
        blocks[40], blocks[41] = blocks[41], blocks[40]
        items: list = [
            Reference(
                symbol=symbol,
                ts_ns=new_york_ns(ref.date, dt.time(0)),
                prev_close=ref.prev_close,
                tier=ref.tier,
                date=ref.date,
            )
        ]
        clock = 0
        for block in blocks:
            end = int(block.columns.ts_ns[0]) // MIN * MIN
            if end > clock:
                items.append(Heartbeat(symbol, end, 1))
                clock = end
            items.append(block)
        results, half = [], len(items) // 2
        for per_call, mode in ((1, "blocks"), (7, "blocks"), (1, "runs"), (1, "one by one")):
            logic, out = SymbolLogic(cfg()), []
            for lo, hi in ((0, half), (half, len(items))):
                if lo:  # the snapshot at the same item every time (a pattern's vector, a view, pickles as a copy)
                    logic = SymbolLogic(cfg(), state=pickle.loads(pickle.dumps(logic.snapshot())))
                for i in range(lo, hi, per_call):
                    call = items[i : min(i + per_call, hi)]
                    if mode == "blocks" or not isinstance(call[0], TickBlock):
                        out += logic.on_item(call)[0]
                    elif mode == "runs":  # a list of ticks, as the live source brings them (_accept_run)
                        out += logic.on_item(call[0].ticks())[0]
                    else:  # the oracle: the per-tick path, not one call that takes a run or a block at once
                        for tick in call[0].ticks():
                            logic._on_tick(tick, out)
                        logic._apply_held(out)
            out += logic.on_eof()[0]
            results.append([pickle.dumps(b) for b in bars(out)])
        assert len(results[0]) > 380 and results[0] == results[1] == results[2] == results[3]
