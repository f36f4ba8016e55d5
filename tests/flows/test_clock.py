"""The partition event-time clock: heartbeats where the watermark crosses a bar boundary, to every symbol of
the partition and the clock's own key; a lone far-ahead timestamp does not move it, a confirmed jump does."""

from __future__ import annotations

from flows.bars import Heartbeat
from flows.clock import EventClock, clock_key
from schemas.ticks import Reference, Trade

OPEN = 1_709_562_600_000_000_000  # 2024-03-04 09:30 ET
S = 10**9
MIN = 60 * S


def trade(symbol: str, ts_ns: int) -> Trade:
    return Trade(symbol=symbol, ts_ns=ts_ns, price=10.0, size=100)


def run(clock: EventClock, ticks) -> list:
    """The stream a source emits: each tick preceded by the heartbeats it released."""
    out = []
    for tick in ticks:
        out += clock.observe(tick)
        out.append(tick)
    return out


def new_clock(**over) -> EventClock:
    return EventClock(
        **({"name": "ticks[0]", "clocks": 3, "bar_ns": MIN, "lateness_ns": 2 * S, "max_ahead_ns": 5 * MIN} | over)
    )


def test_heartbeats_follow_the_watermark_to_every_symbol_and_the_clock_key():
    clock = new_clock()
    ticks = [
        trade("AAA", OPEN + 10 * S),
        trade("BBB", OPEN + 30 * S),
        trade("AAA", OPEN + MIN + 1 * S),
        trade("AAA", OPEN + MIN + 2 * S),
        trade("BBB", OPEN + 3 * MIN + 5 * S),
    ]
    out = run(clock, ticks)
    beats = [x for x in out if isinstance(x, Heartbeat)]
    # the watermark (newest - 2 s) reaches 09:31 only with the tick at 09:31:02, and 09:33 with the last
    assert [(b.symbol, b.ts_ns) for b in beats] == [
        ("@ticks[0]", OPEN),  # the first tick: only the clock's own key is known yet
        ("AAA", OPEN + MIN),
        ("BBB", OPEN + MIN),
        ("@ticks[0]", OPEN + MIN),
        ("AAA", OPEN + 3 * MIN),
        ("BBB", OPEN + 3 * MIN),
        ("@ticks[0]", OPEN + 3 * MIN),
    ]
    assert out.index(beats[1]) == out.index(ticks[3]) - 3, "sent where the watermark crossed, before that tick"
    assert {(b.fanout, b.clock, b.clocks) for b in beats[1:]} == {(3, "ticks[0]", 3)}
    assert clock_key("ticks[0]") == "@ticks[0]"


def test_a_lone_tick_far_ahead_does_not_move_the_clock():
    ticks = [trade("AAA", OPEN + i * S) for i in range(0, 50, 10)]
    bogus = trade("BBB", OPEN + 86_400 * S)  # a day ahead: a producer's clock error
    later = [trade("AAA", OPEN + i * S) for i in range(50, 130, 10)]
    unguarded = new_clock(max_ahead_ns=None)
    run(unguarded, ticks + [bogus] + later)
    assert unguarded.now_ns == bogus.ts_ns  # the fault: one tick drags the whole partition a day ahead
    clock = new_clock()
    beats = [x for x in run(clock, ticks + [bogus] + later) if isinstance(x, Heartbeat)]
    assert clock.now_ns == later[-1].ts_ns and not clock.suspect_ns
    assert max(b.ts_ns for b in beats) == OPEN + MIN


def test_a_confirmed_jump_moves_the_clock():
    day1 = [trade("AAA", OPEN + i * MIN) for i in range(3)]
    day2 = [trade("AAA", OPEN + 86_400 * S + i * S) for i in range(3)]  # the next morning: a real gap
    clock = new_clock()
    out = run(clock, day1 + day2)
    assert clock.now_ns == day2[-1].ts_ns
    # the first tick of the day waits for the second to confirm the jump; beats follow from there
    assert not isinstance(out[out.index(day2[0]) - 1], Heartbeat)
    jump = out[out.index(day2[1]) - 1]
    assert isinstance(jump, Heartbeat) and jump.ts_ns == OPEN + 86_400 * S - MIN


def test_reference_data_neither_moves_the_clock_nor_joins_it():
    clock = new_clock()
    run(clock, [trade("AAA", OPEN), Reference(symbol="ZZZ", ts_ns=OPEN + 86_400 * S, prev_close=10.0, tier=1)])
    assert clock.now_ns == OPEN and set(clock.symbols) == {"AAA"}


def test_a_later_far_ahead_tick_replaces_the_suspect_instead_of_confirming_it():
    clock = new_clock()
    run(clock, [trade("AAA", OPEN), trade("AAA", OPEN + 86_400 * S), trade("AAA", 4_070_000_000 * S)])
    assert clock.now_ns == OPEN and clock.suspect_ns == 4_070_000_000 * S  # a day, then 2099: no agreement
    run(clock, [trade("AAA", OPEN + S)])
    assert clock.now_ns == OPEN + S and not clock.suspect_ns


def test_a_thin_stream_takes_its_earliest_suspect_after_a_run_of_them():
    clock = new_clock()
    hourly = [trade("AAA", OPEN + h * 3600 * S) for h in range(7)]  # every tick an hour after the one before
    run(clock, hourly)
    # the 5th far-ahead tick in a row, none near another: the earliest of the run becomes the clock (it moves
    # on, if slowly, where a partition is this thin; its heartbeats lag, nothing is lost)
    assert clock.now_ns == hourly[1].ts_ns and clock.suspect_ns == hourly[6].ts_ns
