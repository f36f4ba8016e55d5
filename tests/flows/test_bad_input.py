"""No poison pills: every message the decoder or the bar step refuses becomes a dead letter with a reason,
carries its original bytes and origin, and leaves the symbol's state as it was. Each test first shows the
harm the message would do (or did, before), then that it is dead-lettered instead."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conditioning.features.ssr_luld import SsrLuldInputError
from conditioning.features.state import BarFeatures, SymbolFeatures
from flows.bars import MAX_SUSPECTS, Heartbeat, Received, SymbolLogic
from flows.config import PipelineConfig
from flows.feature_records import feature_record
from flows.sources.kafka import decode_message
from schemas.records import DeadLetter
from schemas.session import session_day
from schemas.ticks import Quote, Reference, Status, Trade, decode_tick, encode_tick
from schemas.wire import WireTrade, as_model

from .kafka_fakes import FakeMessage

OPEN = 1_514_903_400_000_000_000  # 2018-01-02 09:30:00 ET
S = 1_000_000_000
MIN = 60 * S
DAY = 86_400 * S


def cfg(**over) -> PipelineConfig:
    return PipelineConfig(**({"bar_ms": 60_000, "lookback_s": 1800, "allowed_lateness_ms": 2_000} | over))


def wire(t_ns: int, price: float = 100.0, symbol: str = "AAA", **extra) -> bytes:
    return json.dumps({"kind": "trade", "symbol": symbol, "ts_ns": t_ns, "price": price, "size": 100} | extra).encode()


def message(raw: bytes, key: bytes | None = b"AAA", offset: int = 0) -> FakeMessage:
    return FakeMessage(offset, raw, key, partition=1)


def received(t_ns: int, price: float = 100.0, offset: int = 0, **extra) -> Received:
    (item,) = decode_message(message(wire(t_ns, price, **extra), offset=offset))
    assert isinstance(item, Received)
    return item


def feed(logic: SymbolLogic, items) -> list:
    out = []
    for item in items:
        out += logic.on_item([item])[0]
    return out


def dead(out) -> list[DeadLetter]:
    return [x for x in out if isinstance(x, DeadLetter)]


def bars(out) -> list[BarFeatures]:
    return [x for x in out if isinstance(x, BarFeatures)]


def records(out) -> list[str]:
    """The feature records the bars become: equal records, equal features, states and patterns."""
    return [feature_record(b).model_dump_json() for b in bars(out)]


def test_message_without_a_key_is_dead_lettered():
    raw = wire(OPEN)
    assert isinstance(decode_tick(raw), Trade)  # a valid tick: only its missing key is wrong
    (dl,) = decode_message(message(raw, key=None, offset=41))
    assert isinstance(dl, DeadLetter) and dl.reason == "missing_key" and "AAA" in dl.detail
    assert (dl.raw, dl.key, dl.topic, dl.partition, dl.offset) == (raw, None, "ticks", 1, 41)
    (other,) = decode_message(message(raw, key=b"BBB"))
    assert other.reason == "key_mismatch"
    (ok,) = decode_message(message(raw))
    assert isinstance(ok, Received) and as_model(ok.tick) == decode_tick(raw) and ok.raw == raw


def test_late_tick_dead_letter_carries_the_original_message():
    logic = SymbolLogic(cfg())
    raw = wire(OPEN + 12 * S) + b"  "  # the original bytes, not a re-encoding of the tick
    late = Received(decode_tick(raw), raw, "ticks", 2, 77)
    out = feed(logic, [received(OPEN + 10 * S), received(OPEN + 20 * S), late])
    (dl,) = dead(out)
    assert dl.reason == "late" and (dl.raw, dl.key, dl.topic, dl.partition, dl.offset) == (raw, "AAA", "ticks", 2, 77)
    # the reorder buffer holds ticks, not the messages they came in
    assert logic.state.pending and all(isinstance(t, WireTrade) for _, _, t in logic.state.pending)


def reference(date: dt.date, prev_close: float, ts_ns: int | None = None) -> Reference:
    """Reference data for ``date``, stamped at the start of it unless ``ts_ns`` says otherwise."""
    return Reference(symbol="AAA", ts_ns=ts_ns or session_day(date).start_ns, prev_close=prev_close, tier=1, date=date)


def two_days(stale: list) -> list:
    """Day 1 and 2 of AAA with their reference data; ``stale`` arrives in the middle of day 2."""
    day1, day2 = dt.date(2018, 1, 2), dt.date(2018, 1, 3)
    first = [reference(day1, 100.0)] + [trade(OPEN + m * MIN + S, 100.0 + 0.01 * (m % 3)) for m in range(30)]
    second = [reference(day2, 100.0)] + [trade(OPEN + DAY + m * MIN + S, 95.0 - 0.01 * (m % 3)) for m in range(30)]
    return first + second[:15] + stale + second[15:]


def trade(t_ns: int, price: float = 100.0) -> Trade:
    return Trade(symbol="AAA", ts_ns=t_ns, price=price, size=100)


def test_stale_reference_is_dead_lettered_and_changes_nothing():
    day1 = dt.date(2018, 1, 2)
    resent = reference(day1, 58.5)  # yesterday's reference data, re-sent during day 2
    clean = SymbolLogic(cfg())
    expected = feed(clean, two_days([])) + clean.on_eof()[0]
    # what it did: the SSR/LULD rules refuse a past date, and the exception stopped the process
    probe = SymbolLogic(cfg())
    feed(probe, two_days([])[:47])
    with pytest.raises(SsrLuldInputError, match="after that date"):
        probe.state.features.on_reference(day1, 58.5, 1)
    logic = SymbolLogic(cfg())
    out = feed(logic, two_days([resent, reference(day1, 58.5, ts_ns=OPEN + DAY)]))  # by ts_ns or by date
    out += logic.on_eof()[0]
    assert [(d.reason, d.key) for d in dead(out)] == [("stale_reference", "AAA")] * 2
    assert "2018-01-02" in dead(out)[0].detail and decode_tick(dead(out)[0].raw) == resent
    assert records(out) == records(expected) and len(bars(out)) == 60  # as if it never came


def test_an_input_error_inside_the_features_is_a_dead_letter_not_a_crash(monkeypatch):
    original = SymbolFeatures.on_trade

    def picky(self, ts_ns, price, size):
        if price == 13.0:
            raise SsrLuldInputError("unlucky price")
        original(self, ts_ns, price, size)

    monkeypatch.setattr(SymbolFeatures, "on_trade", picky)
    logic = SymbolLogic(cfg())
    out = feed(logic, [trade(OPEN + S), trade(OPEN + 2 * S, 13.0), trade(OPEN + 3 * S), trade(OPEN + MIN + 5 * S)])
    (dl,) = dead(out)
    assert dl.reason == "rejected" and dl.detail == "unlucky price" and decode_tick(dl.raw).price == 13.0
    (bar,) = bars(out)
    assert bar.n_trades == 2  # the symbol goes on


def session_of(day: int, n: int, step_s: int = 10, first_offset: int = 0) -> list[Received]:
    """``n`` trades of AAA ``step_s`` apart from 09:30 on trading day ``day`` (0 = 2018-01-02)."""
    return [
        received(OPEN + day * DAY + (i * step_s + 1) * S, 100.0 + 0.01 * (i % 5), offset=first_offset + i)
        for i in range(n)
    ]


def test_tick_from_the_future_is_dead_lettered_instead_of_moving_the_clock():
    stream = session_of(0, 60)
    ahead = [
        received(OPEN + 3000 * S + DAY, offset=900),  # a day ahead: passes every check of the format
        received(4_070_000_000 * S, offset=901),
    ]  # 2098-12-22
    polluted = stream[:30] + ahead[:1] + stream[30:45] + ahead[1:] + stream[45:]
    clean = SymbolLogic(cfg())
    expected = feed(clean, stream) + clean.on_eof()[0]
    # what it did: the clock jumped, every later tick of the symbol was late and its bars were lost
    lax = SymbolLogic(cfg(max_ahead_ms=200 * 365 * 86_400_000))
    out = feed(lax, polluted) + lax.on_eof()[0]
    assert sum(d.reason == "late" for d in dead(out)) == 30 and len(bars(out)) < len(bars(expected))
    logic = SymbolLogic(cfg())
    out = feed(logic, polluted) + logic.on_eof()[0]
    assert [(d.reason, d.offset, d.raw) for d in dead(out)] == [("future", x.offset, x.raw) for x in ahead]
    assert records(out) == records(expected)


def test_real_jumps_are_confirmed_by_the_next_tick():
    friday, monday = 3, 6  # 2018-01-05 and 2018-01-08: a weekend between
    stream = session_of(0, 30) + session_of(1, 30, first_offset=100) + session_of(friday, 30, first_offset=200)
    stream += session_of(monday, 30, first_offset=300)
    lax = SymbolLogic(cfg(max_ahead_ms=200 * 365 * 86_400_000))
    expected = feed(lax, stream) + lax.on_eof()[0]
    logic = SymbolLogic(cfg())
    out = feed(logic, stream[:31])
    assert logic.state.suspects == [stream[30]]  # the first tick of day 2 waits for the next one...
    out += feed(logic, stream[31:]) + logic.on_eof()[0]
    assert dead(out) == [] and records(out) == records(expected)  # ...which confirms it: nothing lost
    assert len(bars(out)) == 4 * 5


def test_a_thin_symbol_whose_ticks_are_further_apart_than_the_bound_loses_nothing():
    stream = session_of(0, 30, step_s=600)  # every 10 minutes, max_ahead_ms is 5
    lax = SymbolLogic(cfg(max_ahead_ms=200 * 365 * 86_400_000))
    expected = feed(lax, stream) + lax.on_eof()[0]
    logic = SymbolLogic(cfg())
    out = feed(logic, stream)
    assert len(logic.state.suspects) == MAX_SUSPECTS  # each one beyond the clock: applied with a lag, bounded
    out += feed(logic, [Heartbeat("AAA", OPEN + 6 * 3600 * S, 1)])  # replay's clock reaches them
    out += logic.on_eof()[0]
    assert dead(out) == [] and records(out) == records(expected)


def test_lone_suspect_at_the_end_of_input_and_suspects_in_a_snapshot():
    stream = session_of(0, 20)
    bogus = received(OPEN + DAY, offset=500)
    logic = SymbolLogic(cfg())
    feed(logic, stream + [bogus])
    assert logic.state.suspects == [bogus]
    restored = SymbolLogic(cfg(), state=pickle.loads(pickle.dumps(logic.snapshot())))
    (dl,) = dead(restored.on_eof()[0])  # nothing confirmed it
    assert (dl.reason, dl.offset, dl.raw) == ("future", 500, bogus.raw)
    # a symbol that never had a clock: its first tick is the clock
    (first,) = session_of(2, 1)
    alone = SymbolLogic(cfg())
    out = feed(alone, [first]) + alone.on_eof()[0]
    assert dead(out) == [] and bars(out)[0].n_trades == 1


def test_a_resent_tick_counts_once_by_its_sequence_number():
    stream = [received(OPEN + (i // 2 + 1) * S, 100.0, offset=i, seq=i) for i in range(200)]  # two per second
    assert decode_tick(stream[0].raw) == decode_tick(stream[1].raw).model_copy(update={"seq": 0})  # twins but seq
    clean = SymbolLogic(cfg())
    expected = feed(clean, stream) + clean.on_eof()[0]
    # what it did: without a sequence number, a copy is a second trade (and identical trades are legitimate)
    unnumbered = [received(OPEN + (i // 2 + 1) * S, 100.0, offset=i) for i in range(200)]
    doubled = SymbolLogic(cfg())
    out = feed(doubled, unnumbered + unnumbered[-3:]) + doubled.on_eof()[0]
    assert dead(out) == [] and sum(b.n_trades for b in bars(out)) == sum(b.n_trades for b in bars(expected)) + 3
    # numbered: copies of a tick in the reorder buffer, at the watermark, held as a suspect, or of reference
    # data are dead-lettered; a copy of one whose time is released is late
    logic = SymbolLogic(cfg())
    ref = Reference(symbol="AAA", ts_ns=OPEN + DAY, prev_close=100.0, tier=1, seq=1000)
    future = received(OPEN + DAY, offset=1001, seq=1001)
    out = feed(logic, [ref] + stream[:150] + [ref, stream[149], stream[148], future, future, stream[10]])
    assert [(d.reason, d.offset) for d in dead(out)] == [
        ("duplicate", None),
        ("duplicate", 149),
        ("duplicate", 148),
        ("duplicate", 1001),
        ("future", 1001),
        ("late", 10),  # the tick near the clock refutes the held one, then is late itself
    ]
    out += feed(logic, stream[150:]) + logic.on_eof()[0]
    assert records(out) == records(expected)
    # of 200 ticks it remembers those of the last ~2 s (the allowed lateness) and the day-2 reference data
    assert len(logic.state.seen) == len(logic.state.seen_by_time) < 10


def test_produced_ticks_are_numbered_per_symbol(sim_files):
    from flows.producer import table_ticks

    _, _, market = sim_files
    seqs: dict[str, list[int]] = {}
    for tick in table_ticks(market.ticks, market.reference):
        seqs.setdefault(tick.symbol, []).append(tick.seq)
    assert all(s == list(range(len(s))) for s in seqs.values()) and len(seqs) > 1


class CountingLogic(SymbolLogic):
    """Counts the ticks the bar step applies: one by one, or a run of block rows at once (a list of ticks in
    order is taken as a block), whose fallback to one by one is not counted twice."""

    applied = 0
    in_rows = False

    def _apply(self, tick, out) -> None:
        super()._apply(tick, out)
        CountingLogic.applied += not self.in_rows

    def _apply_rows(self, block, lo, hi, out) -> None:
        CountingLogic.applied += hi - lo
        self.in_rows = True
        try:
            super()._apply_rows(block, lo, hi, out)
        finally:
            self.in_rows = False


def hostile_ticks():
    """Valid ticks a feed can still send: times around, behind and far ahead of the session (2099), extreme
    prices and sizes inside the limits, crossed quotes, halts and bands, reference data for any date,
    repeated sequence numbers; as they would come from Kafka or a file."""
    offsets = st.one_of(
        st.integers(-120, 600).map(lambda s: s * S),
        st.sampled_from([-DAY, DAY, 3 * DAY]),
        st.just(4_070_000_000 * S - OPEN),
    )
    price = st.sampled_from([1e-4, 0.01, 9.99, 100.0, 101.0, 1e7]) | st.floats(1e-4, 1e7)
    size = st.sampled_from([1e-6, 1.0, 100.0, 1e9])
    seq = st.none() | st.integers(0, 5)
    common = {"symbol": st.just("AAA"), "ts_ns": offsets.map(lambda o: OPEN + o), "seq": seq}
    trade = st.builds(Trade, price=price, size=size, **common)
    quote = st.builds(Quote, bid=price, ask=price, bid_size=size, ask_size=size, **common)
    flags = st.none() | st.booleans()
    status = st.builds(
        lambda lo, width, banded, **kw: Status(
            **kw, **({"band_low": lo, "band_high": min(lo * width, 1e7)} if banded and lo < 1e7 else {})
        ),
        lo=price,
        width=st.floats(1.001, 3.0),
        banded=st.booleans(),
        halted=flags,
        luld_pause=flags,
        ssr=flags,
        **common,
    )
    dates = st.integers(-3, 3).map(lambda d: dt.date(2018, 1, 2) + dt.timedelta(days=d))
    ref = st.builds(
        lambda d, stamp, **kw: Reference(**kw, date=d, ts_ns=stamp or session_day(d).start_ns),
        d=dates,
        stamp=st.none() | common["ts_ns"],
        prev_close=price,
        tier=st.sampled_from([1, 2]),
        symbol=st.just("AAA"),
        seq=seq,
    )
    tick = st.one_of(trade, trade, quote, quote, status, ref)
    return st.one_of(
        tick, st.builds(lambda t, o: Received(t, encode_tick(t), "ticks", 0, o), tick, st.integers(0, 10**6))
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            hostile_ticks(), st.integers(0, 400).map(lambda m: Heartbeat("AAA", OPEN + m * MIN, 1)), st.just("snapshot")
        ),
        max_size=40,
    )
)
def test_no_sequence_of_valid_but_hostile_ticks_stops_the_bar_step(items):
    """Fuzz: whatever the order and content, the bar step never raises; every tick is applied once or
    dead-lettered once with a reason the arrival checks give (none slips through to ``rejected``), nothing
    stays held after the end of input, and bars come out in time order."""
    CountingLogic.applied = 0
    logic = CountingLogic(cfg())
    out, n_ticks = [], 0
    for item in items:
        if item == "snapshot":  # Bytewax recovery: the state pickles and resumes
            logic = CountingLogic(cfg(), state=pickle.loads(pickle.dumps(logic.snapshot())))
            continue
        n_ticks += not isinstance(item, Heartbeat)
        out += logic.on_item([item])[0]
    out += logic.on_eof()[0]
    reasons = [d.reason for d in dead(out)]
    assert set(reasons) <= {"late", "future", "duplicate", "stale_reference"}
    assert CountingLogic.applied + len(reasons) == n_ticks
    if logic.state is not None:
        assert not logic.state.pending and not logic.state.suspects
    ends = [b.window_end_ns for b in bars(out)]
    assert ends == sorted(set(ends))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1, 1, 1, 3, 20, 61, -1, -4, 7_200]).map(lambda s: s * S),
            st.none() | st.integers(0, 3),
            st.sampled_from(["trade", "trade", "quote", "heartbeat", "received"]),
        ),
        max_size=80,
    ),
    st.lists(st.integers(1, 15), min_size=1, max_size=20),
    st.sampled_from([0, 2_000]),
)
def test_a_list_at_a_time_is_the_same_as_one_item_at_a_time(steps, cuts, lateness_ms):
    """The bar step takes a symbol's share of a batch as one list, with a fast path for a run of ticks in order;
    mostly ordered streams (where it is taken) with disorder, gaps past max_ahead_ms, repeated sequence
    numbers and heartbeats mixed in give the same bars, dead letters and state as one item at a time."""
    items: list = []
    t = OPEN
    for step, seq, kind in steps:
        t += step
        if kind == "heartbeat":
            items.append(Heartbeat("AAA", t // MIN * MIN, 1))
        elif kind == "quote":
            items.append(Quote(symbol="AAA", ts_ns=t, bid=99.9, bid_size=100, ask=100.1, ask_size=200, seq=seq))
        else:
            tick = Trade(symbol="AAA", ts_ns=t, price=100.0 + (t // S) % 7 * 0.01, size=100, seq=seq)
            items.append(Received(tick, encode_tick(tick), "ticks", 0, len(items)) if kind == "received" else tick)
    one, lists = SymbolLogic(cfg(allowed_lateness_ms=lateness_ms)), SymbolLogic(cfg(allowed_lateness_ms=lateness_ms))
    by_one = feed(one, items)
    by_list, start = [], 0
    for n in cuts * (len(items) // max(1, sum(cuts)) + 1):
        by_list += lists.on_item(items[start : start + n])[0]
        start += n
    by_one, by_list = by_one + one.on_eof()[0], by_list + lists.on_eof()[0]
    assert records(by_list) == records(by_one)
    assert [(d.reason, d.raw, d.offset) for d in dead(by_list)] == [(d.reason, d.raw, d.offset) for d in dead(by_one)]
    assert [x.ts_ns for x in by_list if isinstance(x, Heartbeat)] == [
        x.ts_ns for x in by_one if isinstance(x, Heartbeat)
    ]
    if one.state is not None:
        a, b = one.state, lists.state
        assert b is not None
        assert (a.released_ns, a.newest_ns, a.bar_end_ns, a.seen, sorted(a.seen_by_time), sorted(a.pending)) == (
            b.released_ns,
            b.newest_ns,
            b.bar_end_ns,
            b.seen,
            sorted(b.seen_by_time),
            sorted(b.pending),
        )
