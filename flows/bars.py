"""Per-symbol event-time bar logic: the state the dataflow keeps for each symbol.

Ticks of one symbol may arrive slightly out of order (several venues, several producers). They wait in a
small reorder buffer and are released in event-time order once the symbol's watermark,
``newest tick - allowed_lateness``, passes them; a bar ``[end - bar, end)`` closes when the watermark
reaches ``end``. A tick older than what was already released (or than a closed bar) is *late*: it comes back
as a dead letter (reason ``late``) instead of being applied out of order or lost. Live ticks arrive as
:class:`Received`, so that such a dead letter carries the original message and its topic/partition/offset, or
mostly as :class:`TickBlock` columns that carry their messages (:class:`Messages`), taken one by one as
:class:`Received` wherever a block cannot go in whole. Replay's arrive as :class:`TickBlock` columns: a block
that is in order goes into the buffer whole, and
leaves it a bar of the grid at a time, through the feature state's columnar path (``SymbolFeatures.on_ticks``),
with exactly the result of its ticks one by one (tests/flows/test_bars.py, tests/conditioning/features/
test_state_columns.py).

A tick implausibly far ahead of the symbol's clock (``max_ahead_ms`` past the newest tick or the watermark,
whichever is later) does not move it: a corrupt timestamp (a year 2099, or just a day ahead) would make every
later tick of the symbol late. It is held as a *suspect*, and the input that follows decides, a function of
the symbol's own input sequence only (replay stays deterministic; suspects are part of the snapshot):

- a tick near the clock refutes it: the suspects that tick does not reach (within ``max_ahead_ms``) are
  dead-lettered with reason ``future``, the others applied;
- a tick that is also far ahead, but within ``max_ahead_ms`` of a suspect, confirms the jump (the first tick
  of a session after a night or a weekend): the suspects up to ``max_ahead_ms`` past the earliest of the two
  are applied with it, in arrival order; others stay suspects;
- more than :data:`MAX_SUSPECTS` suspects in a row, none near another (a symbol so thin that its ticks are
  further apart than ``max_ahead_ms``): the earliest one becomes the clock, as if confirmed;
- a heartbeat (replay's clock, once per bar) confirms the suspects it reaches; none of a time-sorted file
  stays held past the next bar boundary;
- at the end of input a suspect is dead-lettered ``future``, unless the symbol never had a clock: then its
  earliest suspect becomes the clock, as above.

A symbol's first tick has no clock to be measured against: it is a suspect too, so that a corrupt first tick
cannot set the clock. Reference data never moves the clock and is exempt.

A tick with a producer sequence number whose identity ``(symbol, ts_ns, seq)`` the symbol has already received
is dead-lettered ``duplicate``: a re-sent message counts once. The identities are remembered while their time
is not yet released (held, in the reorder buffer, or at the watermark): memory bounded like the buffer; a
copy arriving after that is ``late``. Ticks without ``seq`` are never duplicates (see schemas/ticks.py).

Quiet symbols still close their bars: a :class:`Heartbeat` from the input partition's event-time clock
(flows/clock.py) advances the watermark without a tick. Nothing here reads the wall clock, so a stalled feed
closes no bar and makes no tick late: only the input decides. A heartbeat is passed on after the bars it
closed: downstream, it says that this symbol has emitted every bar ending at or before its time (the
inference step orders bars by it).

A bar is emitted when it saw trades or quotes, or while the symbol is halted or in a LULD limit state
(a halted symbol keeps publishing its HALTED state). Outside the regular session (when configured) ticks
are counted and skipped: LULD/SSR and the features are defined on the regular session.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress

import numpy as np
from bytewax.operators import StatefulLogic

from conditioning.features.columns import Ticks
from conditioning.features.ssr_luld import SsrLuldInputError
from conditioning.features.state import BarFeatures, FeatureParams, SymbolFeatures
from conditioning.features.types import Pattern
from flows.config import PipelineConfig
from flows.metrics import METRICS
from schemas.layout import SsrLuldState
from schemas.records import DeadLetter
from schemas.session import session_at, trading_date
from schemas.ticks import Quote, Reference, Status, Trade
from schemas.wire import WireQuote, WireReference, WireStatus, WireTrade, encode

#: Decoded (schemas/wire.py: live and replay) or built as a model (tests, tools): the same fields either way.
Tick = Trade | Quote | Reference | Status | WireTrade | WireQuote | WireReference | WireStatus

#: How many far-ahead ticks a symbol holds at most; one more, none near another, and the earliest is taken
#: for the clock (module docstring). Bounds the memory, and the lag of a symbol thinner than max_ahead_ms.
MAX_SUSPECTS = 4


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Event time for one symbol, from the clock of its input partition (flows/clock.py). Into the bar step:
    every tick of ``symbol`` before ``ts_ns`` has been sent. Out of it: every bar of ``symbol`` ending at or
    before ``ts_ns`` has been emitted. ``clock`` sent it to ``fanout`` keys at once, so ``fanout`` heartbeats
    of ``clock`` with this ``ts_ns`` out of the bar step mean that all of that partition has passed ``ts_ns``;
    once each of the ``clocks`` partitions has, the whole input has. ``evict``: the symbol has been idle past
    ``pipeline.evict_idle_s``; its state is discarded after this heartbeat (a later tick starts it afresh)."""

    symbol: str
    ts_ns: int
    fanout: int
    clock: str = "ticks"
    clocks: int = 1
    evict: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    """A live tick with the Kafka message it was decoded from: a tick the bar step refuses on arrival is
    dead-lettered with these original bytes and where they were read. Only the tick goes on into the reorder
    buffer; the bytes stay only while a tick is held as a suspect (at most :data:`MAX_SUSPECTS`)."""

    tick: Tick
    raw: bytes
    topic: str
    partition: int
    offset: int

    # Keyed and counted like the tick it carries.
    @property
    def symbol(self) -> str:
        return self.tick.symbol

    @property
    def kind(self) -> str:
        return self.tick.kind


@dataclass(frozen=True, slots=True)
class Messages:
    """The Kafka messages a live :class:`TickBlock`'s rows were decoded from, row for row: what the bar step
    needs to take the rows one by one as :class:`Received` (a refused one is dead-lettered with its original
    bytes and offset) and to recognise a re-sent tick (``seq``)."""

    ticks: Sequence[Tick]
    raws: Sequence[bytes]
    topic: str
    partition: int
    offsets: Sequence[int]

    def received(self) -> list[Received]:
        return [
            Received(tick, raw, self.topic, self.partition, offset)
            for tick, raw, offset in zip(self.ticks, self.raws, self.offsets, strict=True)
        ]


@dataclass(frozen=True, slots=True, eq=False)
class TickBlock:
    """Trades and quotes of one symbol as columns, in stream order, between two heartbeats of their clock:
    replay's rows of a record batch that passed validation (flows/sources/table.py; no ``seq``), or live, a
    symbol's messages of a consumed batch (flows/sources/kafka.py), with the ``origin`` messages. The bar step
    takes a block whole where tick by tick would do the same (:meth:`SymbolLogic._accept_block`), else as the
    ticks :meth:`ticks` makes of it."""

    symbol: str
    columns: Ticks
    origin: Messages | None = None

    def __len__(self) -> int:
        return len(self.columns)

    def ticks(self, lo: int = 0, hi: int | None = None) -> list[Tick]:
        """Rows ``lo..hi-1`` as the wire ticks they stand for (what the Kafka path would have decoded)."""
        return _ticks(self.symbol, self.columns.rows(lo, len(self) if hi is None else hi))

    def items(self) -> Sequence[Tick | Received]:
        """The block as the bar step takes it one by one: as received (live), else :meth:`ticks`."""
        return self.ticks() if self.origin is None else self.origin.received()


def _ticks(symbol: str, columns: Ticks) -> list[Tick]:
    out: list[Tick] = []
    for t, trade, p, s, b, bs, a, a_s in zip(*(c.tolist() for c in columns.arrays()), strict=True):
        if trade:
            out.append(WireTrade(symbol=symbol, ts_ns=t, price=p, size=s))
        else:
            out.append(WireQuote(symbol=symbol, ts_ns=t, bid=b, bid_size=bs, ask=a, ask_size=a_s))
    return out


def by_symbol(
    items: Iterable[Tick | Received | Heartbeat | DeadLetter],
) -> list[DeadLetter | tuple[str, list[Tick | Received | Heartbeat | TickBlock]]]:
    """A source's batch as the dataflow takes it: the dead letters, then each symbol's ticks and heartbeats as
    one list, in stream order. Only the order within a symbol means anything to the bar step, and a list per
    symbol costs the dataflow one item where a tick each cost it one per tick at every step."""
    dead: list[DeadLetter | tuple[str, list[Tick | Received | Heartbeat | TickBlock]]] = []
    symbols: dict[str, list[Tick | Received | Heartbeat | TickBlock]] = {}
    for item in items:
        if isinstance(item, DeadLetter):
            dead.append(item)
        elif (same := symbols.get(item.symbol)) is not None:
            same.append(item)
        else:
            symbols[item.symbol] = [item]
    return dead + list(symbols.items())


def feature_params(cfg: PipelineConfig) -> FeatureParams:
    return FeatureParams(
        bar_ns=cfg.bar_ms * 1_000_000,
        lookback_ns=cfg.lookback_s * 1_000_000_000,
        tsrv_k=cfg.tsrv_k,
        pattern_bars=cfg.pattern_bars,
        pattern_horizon_bars=cfg.pattern_horizon_bars,
        baseline_halflife_bars=cfg.baseline_halflife_bars,
        calendar=cfg.session.calendar,
    )


@dataclass
class SymbolState:
    """Everything one symbol carries between ticks; pickled into Bytewax recovery snapshots."""

    features: SymbolFeatures
    #: Reorder buffer: (ts_ns, arrival sequence, tick); the sequence keeps equal timestamps in arrival order.
    pending: list[tuple[int, int, Tick]] = field(default_factory=list)
    #: The reorder buffer's blocks taken whole (_accept_block), oldest first, each ``[block, next row, arrival
    #: sequence of its row 0]``: time-ordered among themselves, merged with ``pending`` by (ts_ns, sequence).
    blocks: list[list] = field(default_factory=list)
    seq: int = 0
    newest_ns: int = 0
    #: Everything before this event time has been applied; a tick below it is late.
    released_ns: int = 0
    #: End of the bar currently filling (0 before the first tick).
    bar_end_ns: int = 0
    ticks_in_bar: int = 0
    #: End of the feature state's open bar (it keeps one open from its first tick on, sessions or not).
    features_end_ns: int = 0
    #: Patterns that matured in bars not emitted (quiet): they ride on the next emitted bar, keeping the time
    #: their outcome became known, so the library loses none.
    matured: list[Pattern] = field(default_factory=list)
    #: Ticks too far ahead of the clock, held until later input confirms or refutes them (module docstring);
    #: as received (live: with their message, for a dead letter), in arrival order, at most MAX_SUSPECTS.
    suspects: list[Tick | Received] = field(default_factory=list)
    #: ``(ts_ns, seq)`` of the applied or buffered ticks that carry a ``seq`` and are not yet older than
    #: ``released_ns`` (module docstring), and the same as a min-heap, to forget them as the watermark passes.
    seen: set[tuple[int, int]] = field(default_factory=set)
    seen_by_time: list[tuple[int, int]] = field(default_factory=list)


class SymbolLogic(StatefulLogic):
    """Bytewax ``stateful`` logic for one symbol: ticks and heartbeats in, BarFeatures and dead letters out."""

    def __init__(self, cfg: PipelineConfig, state: SymbolState | None = None):
        self.cfg = cfg
        self.bar_ns = cfg.bar_ms * 1_000_000
        self.lateness_ns = cfg.allowed_lateness_ms * 1_000_000
        self.ahead_ns = cfg.max_ahead_ms * 1_000_000
        self.calendar = cfg.session.calendar
        #: Built on the first item (Bytewax's builder is not told the key), or restored from a snapshot.
        self.state = state
        #: Released block rows not yet applied, all in one bar of the grid: ``(bar, [(block, lo, hi), ...])``
        #: (:meth:`_release`). A bar's rows released in pieces (the watermark trails the newest tick; a bar's
        #: rows span blocks) go to the feature state in one call. Applied before anything else touches the
        #: state or the output, and by the end of every call, so a snapshot never holds any.
        self._held: tuple[int, list[tuple[TickBlock, int, int]]] | None = None

    # -- Bytewax hooks ------------------------------------------------------------------------------------
    def on_item(
        self, values: list[Tick | Received | Heartbeat | TickBlock]
    ) -> tuple[list[BarFeatures | DeadLetter | Heartbeat], bool]:
        """The symbol's items of one input batch, in stream order (:func:`by_symbol`). A block of columns or a
        run of ticks that is already in order is taken in one step (:meth:`_accept_block`, :meth:`_accept_run`);
        anything else goes tick by tick."""
        out: list[BarFeatures | DeadLetter | Heartbeat] = []
        run: list[Tick | Received] = []
        evicted = False
        for value in values:
            if isinstance(value, Heartbeat):
                self._on_ticks(run, out)
                run = []
                self._on_heartbeat(value, out)
                evicted = value.evict
            elif isinstance(value, TickBlock):
                self._on_ticks(run, out)
                run = []
                if not self._accept_block(value, out):
                    self._apply_held(out)
                    self._on_ticks(value.items(), out)
            else:
                run.append(value)
        self._on_ticks(run, out)
        self._apply_held(out)
        return out, StatefulLogic.DISCARD if evicted and self.state is None else StatefulLogic.RETAIN

    def _on_ticks(self, run: Sequence[Tick | Received], out: list) -> None:
        if run:
            self._apply_held(out)
        if run and not self._accept_run(run, out):
            for value in run:
                self._on_tick(value, out)

    def _on_heartbeat(self, value: Heartbeat, out: list) -> None:
        if self.state is not None:
            if self.state.suspects:
                self._apply_held(out)
                self._settle(max(self._clock(), value.ts_ns) + self.ahead_ns, out, refute=False)
            self._advance(value.ts_ns, out)
            self._apply_held(out)
        out.append(value)  # after the bars it closed: they travel the same channel, in order
        if value.evict:
            self.state = None

    def _on_tick(self, value: Tick | Received, out: list) -> None:
        tick = _tick(value)
        if self.state is None:
            self.state = SymbolState(features=SymbolFeatures(tick.symbol, feature_params(self.cfg)))
        st = self.state
        if tick.seq is not None and self._received_before(tick):
            out.append(
                _refused(
                    value, "duplicate", f"{tick.symbol} tick ts_ns={tick.ts_ns} seq={tick.seq} was already received"
                )
            )
            return
        if isinstance(tick, Reference | WireReference):
            # Reference data is stamped with the start of its trading date and may be published days ahead:
            # it waits for its date in the buffer but never moves the symbol's clock, and is never late. Data
            # for a date already past (yesterday's, re-sent) cannot apply any more: the SSR/LULD rules refuse it.
            date, today = tick.date or trading_date(tick.ts_ns), trading_date(max(st.released_ns, tick.ts_ns))
            if date < today:
                out.append(
                    _refused(
                        value,
                        "stale_reference",
                        f"reference data for {tick.symbol} on {date} arrived on {today}, after that date",
                    )
                )
                return
            self._remember(tick)
            if tick.ts_ns < st.released_ns:
                self._apply(tick, out)
            else:
                heapq.heappush(st.pending, (tick.ts_ns, st.seq, tick))
                st.seq += 1
            return
        clock = self._clock()
        if st.suspects or not clock or tick.ts_ns > clock + self.ahead_ns:
            self._judge(value, out)
        else:
            self._accept(value, out)

    def _accept_run(self, run: Sequence[Tick | Received], out: list) -> bool:
        """Take a run of ticks in one step where item by item would do exactly the same: no suspects held, no
        reference data, in event-time order, none late, none far ahead of the one before, no identity seen
        before. Buffered all at once, then the watermark advances once, to where the last tick takes it;
        bars close and ticks apply in the same order as they would tick by tick (each tick's watermark is at
        or below the next tick's time). Returns False, having done nothing, where the run is not like that."""
        st = self.state
        if st is None or st.suspects:
            return False
        ticks = [_tick(v) for v in run]
        clock = self._clock()
        if not clock or ticks[0].ts_ns < st.released_ns:  # (released_ns >= newest_ns - lateness_ns)
            return False
        reach, prev = clock, ticks[0].ts_ns  # reach: the symbol's clock before each tick
        statuses = False  # (a block holds trades and quotes only)
        for tick in ticks:
            ts = tick.ts_ns
            if isinstance(tick, Reference | WireReference) or ts < prev or ts > reach + self.ahead_ns:
                return False
            statuses = statuses or isinstance(tick, Status | WireStatus)
            prev, reach = ts, max(reach, ts)
        if (keys := self._new_identities(ticks)) is None:
            return False
        if ticks[0].ts_ns >= st.newest_ns and not statuses:
            # as a block (:meth:`_accept_block`'s conditions hold): a bar's rows go to the feature state at once
            st.blocks.append([TickBlock(ticks[0].symbol, columns_of(ticks)), 0, st.seq])
            st.seq += len(ticks)
        else:
            for tick in ticks:
                heapq.heappush(st.pending, (tick.ts_ns, st.seq, tick))
                st.seq += 1
        self._remember_run(ticks, keys)
        st.newest_ns = max(st.newest_ns, ticks[-1].ts_ns)
        self._advance(st.newest_ns - self.lateness_ns, out)
        return True

    def _new_identities(self, ticks: Sequence[Tick]) -> list[tuple[int, int]] | None:
        """``(ts_ns, seq)`` of the run's ticks that carry a ``seq``; None where one repeats (in the run, or one
        received before): then item by item decides which is a duplicate."""
        keys = [(t.ts_ns, t.seq) for t in ticks if t.seq is not None]
        if keys and (len(set(keys)) < len(keys) or not self._st.seen.isdisjoint(keys)):
            return None
        return keys

    def _remember_run(self, ticks: Sequence[Tick], keys: list[tuple[int, int]]) -> None:
        """Remember the identities ``keys`` (in time order) of a run taken in one step as item by item would:
        those not yet older than the watermark at the run's last tick with a seq (where it last forgot some:
        _remember). Before the run moves the symbol's clock."""
        if not keys:
            return
        st = self._st
        last = next(i for i in range(len(ticks) - 1, -1, -1) if ticks[i].seq is not None)
        before = st.newest_ns if last == 0 else max(st.newest_ns, ticks[last - 1].ts_ns)
        forget_below = st.released_ns if last == 0 else max(st.released_ns, before - self.lateness_ns)
        for key in keys[bisect.bisect_left(keys, (forget_below,)) :]:  # (the older ones would be forgotten at once)
            st.seen.add(key)
            heapq.heappush(st.seen_by_time, key)
        while st.seen_by_time and st.seen_by_time[0][0] < forget_below:
            st.seen.discard(heapq.heappop(st.seen_by_time))

    def _accept_block(self, block: TickBlock, out: list) -> bool:
        """Take a block in one step where tick by tick would do exactly the same (:meth:`_accept_run`'s
        conditions; a block has no reference data, and a ``seq`` only live, in its ``origin``), and nothing of
        it is older than the ticks buffered before it (so the buffered blocks stay in time order). Returns
        False, having done nothing, where the block is not like that."""
        st = self.state
        if st is None or st.suspects or not len(block):
            return False
        ts = block.columns.ts_ns
        clock, first = self._clock(), int(ts[0])
        if not clock or first < max(st.released_ns, st.newest_ns) or first > clock + self.ahead_ns:
            return False
        if len(ts) > 1 and ((ts[1:] < ts[:-1]).any() or (ts[1:] > np.maximum(ts[:-1], clock) + self.ahead_ns).any()):
            return False
        if block.origin is not None:
            if (keys := self._new_identities(block.origin.ticks)) is None:
                return False
            self._remember_run(block.origin.ticks, keys)
            block = TickBlock(block.symbol, block.columns)  # the messages are needed on arrival only
        st.blocks.append([block, 0, st.seq])
        st.seq += len(block)
        st.newest_ns = int(ts[-1])
        self._advance(st.newest_ns - self.lateness_ns, out)
        return True

    def on_eof(self) -> tuple[list[BarFeatures | DeadLetter], bool]:
        out: list[BarFeatures | DeadLetter] = []
        st = self.state
        if st is not None and st.suspects:
            clock = self._clock() or min(_tick(v).ts_ns for v in st.suspects)
            self._settle(clock + self.ahead_ns, out, refute=True)
        if st is not None and (st.pending or st.blocks or st.bar_end_ns):
            # End of input: everything pending is final, and the bar holding the last tick closes.
            last = max(
                [t for t, _, _ in st.pending] + [int(b.columns.ts_ns[-1]) for b, _, _ in st.blocks] + [st.released_ns]
            )
            self._advance(last, out)
            self._apply_held(out)  # first: held rows may be what opens the last bar (bar_end_ns is 0 till then)
            if st.bar_end_ns:
                self._close_through(st.bar_end_ns, out)
        return out, StatefulLogic.RETAIN

    def snapshot(self) -> SymbolState | None:
        return self.state

    @property
    def _st(self) -> SymbolState:
        """The symbol's state: the helpers below run only once the first tick has created it."""
        assert self.state is not None, "a helper ran before the symbol's first tick"
        return self.state

    # -- arrival ------------------------------------------------------------------------------------------
    def _clock(self) -> int:
        """How far the symbol's event time has got: its newest tick, or the watermark where a heartbeat or the
        idle clock moved it further; 0 before the first tick."""
        return max(self._st.newest_ns, self._st.released_ns)

    def _accept(self, value: Tick | Received, out: list) -> None:
        """Into the reorder buffer, or a dead letter if it is late."""
        st, tick = self._st, _tick(value)
        if tick.ts_ns < st.released_ns:
            METRICS.late_ticks.inc()
            out.append(
                _refused(
                    value,
                    "late",
                    f"event time {tick.ts_ns} is before {st.released_ns}, already "
                    f"applied for {tick.symbol} (beyond pipeline.allowed_lateness_ms)",
                )
            )
            return
        self._remember(tick)
        heapq.heappush(st.pending, (tick.ts_ns, st.seq, tick))
        st.seq += 1
        st.newest_ns = max(st.newest_ns, tick.ts_ns)
        self._advance(st.newest_ns - self.lateness_ns, out)

    def _received_before(self, tick: Tick) -> bool:
        key = (tick.ts_ns, tick.seq)
        return key in self._st.seen or any((_tick(v).ts_ns, _tick(v).seq) == key for v in self._st.suspects)

    def _remember(self, tick: Tick) -> None:
        """Note the identity of a tick with a ``seq``; forget those a copy of which would be late anyway."""
        if tick.seq is None:
            return
        st = self._st
        while st.seen_by_time and st.seen_by_time[0][0] < st.released_ns:
            st.seen.discard(heapq.heappop(st.seen_by_time))
        key = (tick.ts_ns, tick.seq)
        st.seen.add(key)
        heapq.heappush(st.seen_by_time, key)

    def _judge(self, value: Tick | Received, out: list) -> None:
        """A tick while suspects are held, or one far ahead of the clock: the rules of the module docstring."""
        st, ts = self._st, _tick(value).ts_ns
        st.suspects.append(value)
        clock = self._clock()
        if clock and ts <= clock + self.ahead_ns:  # the stream goes on near the clock
            self._settle(max(clock, ts) + self.ahead_ns, out, refute=True)
            return
        times = [_tick(v).ts_ns for v in st.suspects]
        near = [t for t in times[:-1] if abs(t - ts) <= self.ahead_ns]
        if near:
            self._settle(min(near + [ts]) + self.ahead_ns, out, refute=False)
        elif len(times) > MAX_SUSPECTS:
            self._settle(min(times) + self.ahead_ns, out, refute=False)

    def _settle(self, reach_ns: int, out: list, *, refute: bool) -> None:
        """Accept the suspects at or before ``reach_ns`` in arrival order; dead-letter the others as ``future``
        (``refute``) or keep holding them."""
        st = self._st
        held = []
        for value in st.suspects:
            tick = _tick(value)
            if tick.ts_ns <= reach_ns:
                self._accept(value, out)
            elif refute:
                out.append(
                    _refused(
                        value,
                        "future",
                        f"event time {tick.ts_ns} is more than "
                        f"pipeline.max_ahead_ms ahead of {tick.symbol}'s clock ({self._clock()}), "
                        "and no later input confirmed the jump",
                    )
                )
            else:
                held.append(value)
        st.suspects = held

    # -- event time ---------------------------------------------------------------------------------------
    def _advance(self, watermark_ns: int, out: list) -> None:
        """Apply every buffered tick at or before ``watermark_ns`` in (ts_ns, arrival) order, closing bars on
        the way: the heap's one at a time, a block's as many as come before the heap's next."""
        st = self._st
        while True:
            top = st.pending[0] if st.pending else None
            if st.blocks:
                block, row, seq0 = st.blocks[0]
                ts = block.columns.ts_ns
                if top is None or (int(ts[row]), seq0 + row) < top[:2]:
                    hi = int(np.searchsorted(ts, watermark_ns, "right"))
                    if top is not None:  # its rows at top's time come first if they arrived first
                        hi = min(hi, int(np.searchsorted(ts, top[0], "right" if seq0 < top[1] else "left")))
                    if hi <= row:
                        break
                    self._release(block, row, hi, out)
                    if hi == len(block):
                        st.blocks.pop(0)
                    else:
                        st.blocks[0][1] = hi
                    continue
            if top is None or top[0] > watermark_ns:
                break
            heapq.heappop(st.pending)
            self._close_through(top[0], out)
            self._apply(top[2], out)
            st.released_ns = top[0]
        if watermark_ns > st.released_ns:
            self._close_through(watermark_ns, out)
            st.released_ns = max(st.released_ns, watermark_ns)

    def _release(self, block: TickBlock, lo: int, hi: int, out: list) -> None:
        """Apply rows ``lo..hi-1`` of ``block`` as :meth:`_advance` would one by one: per bar of the grid, close
        the bars its first row closes (the later rows of the same bar close none) and apply its rows at once
        (held, to go with the rows of the same bar that the block releases next: :attr:`_held`)."""
        ts = block.columns.ts_ns[lo:hi]
        bar_ns = self.bar_ns
        last = int(ts[-1])
        if int(ts[0]) // bar_ns == last // bar_ns:  # the common case: one bar, nothing to search
            cuts = [0, len(ts)]
        else:
            bars = ts // bar_ns
            cuts = [0, *(np.flatnonzero(bars[1:] != bars[:-1]) + 1).tolist(), len(ts)]
        for a, b in zip(cuts[:-1], cuts[1:], strict=False):
            self._close_through(int(ts[a]), out)
            bar, held = int(ts[a]) // bar_ns, self._held
            if held is None or held[0] != bar:
                self._apply_held(out)
                self._held = held = (bar, [])
            pieces = held[1]
            if pieces and pieces[-1][0] is block and pieces[-1][2] == lo + a:
                pieces[-1] = (block, pieces[-1][1], lo + b)
            else:
                pieces.append((block, lo + a, lo + b))
        self._st.released_ns = last

    def _apply_held(self, out: list) -> None:
        """Apply the held rows: one piece as it is, several (of consecutive blocks) joined into one run."""
        if self._held is None:
            return
        pieces = self._held[1]
        self._held = None
        if len(pieces) == 1:
            self._apply_rows(*pieces[0], out)
            return
        runs = (block.columns.rows(lo, hi).arrays() for block, lo, hi in pieces)
        joined = TickBlock(pieces[0][0].symbol, Ticks(*(np.concatenate(c) for c in zip(*runs, strict=True))))
        self._apply_rows(joined, 0, len(joined), out)

    def _apply_rows(self, block: TickBlock, lo: int, hi: int, out: list) -> None:
        """:meth:`_apply` of rows ``lo..hi-1`` of ``block``, all in one bar of the grid."""
        st = self._st
        run = block.columns.rows(lo, hi)
        ts = run.ts_ns
        if self.cfg.session.regular_hours_only:
            first, last = int(ts[0]), int(ts[-1])
            day = session_at(first, self.calendar)
            if day != session_at(last, self.calendar):  # across a date: as rare as it is simple
                for tick in block.ticks(lo, hi):
                    self._apply(tick, out)
                return
            if not day.open_ns <= first <= last < day.close_ns:  # (in time order: the ends say if all are inside)
                inside = (ts >= day.open_ns) & (ts < day.close_ns)
                METRICS.ticks_outside_session.inc(len(ts) - int(inside.sum()))
                if not inside.any():
                    return
                run = run.where(inside)
                ts = run.ts_ns
        if not st.bar_end_ns:
            st.bar_end_ns = (int(ts[0]) // self.bar_ns + 1) * self.bar_ns
        self._roll_features(int(ts[0]))
        is_trade, bid, ask = run.is_trade, run.bid, run.ask
        if crossed := int(np.count_nonzero((bid > ask) & ~is_trade)):
            METRICS.crossed_quotes.inc(crossed)
        st.ticks_in_bar += len(ts)
        if not st.features.on_ticks(run):
            for tick in _ticks(block.symbol, run):  # one by one: each one refused is its own dead letter
                self._feed(tick, out)

    def _close_through(self, ts_ns: int, out: list) -> None:
        """Close every bar that ends at or before ``ts_ns`` (bars are ``[end - bar, end)``)."""
        st = self._st
        if not st.bar_end_ns or st.bar_end_ns <= ts_ns:  # (held rows may be what opens the bar)
            self._apply_held(out)
        while st.bar_end_ns and st.bar_end_ns <= ts_ns:
            end = st.bar_end_ns
            bar = st.features.close_bar(end)
            st.features_end_ns = end + self.bar_ns
            st.matured += self._defined(bar.matured)
            if st.ticks_in_bar or bar.ssr_luld_state in (SsrLuldState.HALTED, SsrLuldState.LULD_LIMIT):
                bar.matured, st.matured = st.matured, []
                out.append(bar)
            st.ticks_in_bar = 0
            st.bar_end_ns = self._next_bar_end(end)

    def _next_bar_end(self, end_ns: int) -> int:
        """The next bar end after ``end_ns`` that lies inside a session (bars outside it are never emitted)."""
        nxt = end_ns + self.bar_ns
        if not self.cfg.session.regular_hours_only:
            return nxt
        day = session_at(nxt - 1, self.calendar)
        if day.open_ns < nxt < day.close_ns + self.bar_ns:
            return nxt
        return 0  # the session is over: the next in-session tick opens a new bar

    def _defined(self, matured: list[Pattern]) -> list[Pattern]:
        """The patterns whose outcome horizon ends by the close of their session. Past it the horizon's bars are
        the empty after-hours ones the feature state fills a gap with: a realised variance of nothing (log RV
        near -28 against -14 in session) is not an outcome to retrieve."""
        if not self.cfg.session.regular_hours_only:
            return matured
        return [p for p in matured if p.outcome_end_ns <= session_at(p.end_ns - 1, self.calendar).close_ns]

    def _apply(self, tick: Tick, out: list) -> None:
        """Apply one tick of the reorder buffer: reference data and status to the SSR/LULD rules, a trade or a
        quote of the regular session (when configured) to the open bar."""
        self._apply_held(out)
        st = self._st
        if isinstance(tick, Reference | WireReference | Status | WireStatus):
            if isinstance(tick, Status | WireStatus):
                self._roll_features(tick.ts_ns)
            self._feed(tick, out)
            return
        if self.cfg.session.regular_hours_only:
            day = session_at(tick.ts_ns, self.calendar)
            if not day.open_ns <= tick.ts_ns < day.close_ns:
                METRICS.ticks_outside_session.inc()
                return
        if not st.bar_end_ns:
            st.bar_end_ns = (tick.ts_ns // self.bar_ns + 1) * self.bar_ns
        self._roll_features(tick.ts_ns)
        st.ticks_in_bar += 1
        if isinstance(tick, Quote | WireQuote) and tick.crossed:
            METRICS.crossed_quotes.inc()
        self._feed(tick, out)

    def _feed(self, tick: Tick, out: list) -> None:
        """Into the feature state (and its SSR/LULD rules)."""
        f = self._st.features
        try:
            if isinstance(tick, Trade | WireTrade):
                f.on_trade(tick.ts_ns, tick.price, tick.size)
            elif isinstance(tick, Quote | WireQuote):
                f.on_quote(tick.ts_ns, tick.bid, tick.bid_size, tick.ask, tick.ask_size)
            elif isinstance(tick, Reference | WireReference):
                f.on_reference(tick.date or trading_date(tick.ts_ns), tick.prev_close, tick.tier)
            else:
                f.on_status(
                    tick.ts_ns,
                    halted=tick.halted,
                    luld_pause=tick.luld_pause,
                    ssr=tick.ssr,
                    band_low=tick.band_low,
                    band_high=tick.band_high,
                )
        except SsrLuldInputError as err:
            # The arrival checks refuse what the SSR/LULD rules cannot take, and those rules check before they
            # change anything; should a tick still get through, it is dead-lettered, not a crash (a crash loop
            # under recovery, where it would come back every restart).
            out.append(_refused(tick, "rejected", str(err)))

    def _roll_features(self, ts_ns: int) -> None:
        """Between sessions no bar is emitted, but the feature state must still see its bars closed (as
        empty ones) before a tick of a later bar; the discarded result is an out-of-session bar."""
        st = self._st
        if st.features_end_ns and ts_ns >= st.features_end_ns:
            start = ts_ns - ts_ns % self.bar_ns
            st.matured += self._defined(st.features.close_bar(start).matured)
            st.features_end_ns = start + self.bar_ns
        elif not st.features_end_ns:
            st.features_end_ns = ts_ns - ts_ns % self.bar_ns + self.bar_ns


def columns_of(ticks: Sequence[Tick]) -> Ticks:
    """Trades and quotes as the columns a :class:`TickBlock` holds (the inverse of :func:`_ticks`), a column at a
    time: a trade's bid and ask columns are NaN, a quote's price and size."""
    n = len(ticks)
    trade = [t.kind == "trade" for t in ticks]
    is_trade = np.array(trade, bool).reshape(n)
    is_quote = ~is_trade
    trades = list(compress(ticks, trade))
    quotes = list(compress(ticks, is_quote.tolist()))

    def column(rows: list, mask: np.ndarray, name: str) -> np.ndarray:
        out = np.full(n, np.nan)
        out[mask] = [getattr(t, name) for t in rows]
        return out

    return Ticks(
        np.array([t.ts_ns for t in ticks], np.int64).reshape(n),
        is_trade,
        column(trades, is_trade, "price"),
        column(trades, is_trade, "size"),
        column(quotes, is_quote, "bid"),
        column(quotes, is_quote, "bid_size"),
        column(quotes, is_quote, "ask"),
        column(quotes, is_quote, "ask_size"),
    )


def _tick(value: Tick | Received) -> Tick:
    return value.tick if isinstance(value, Received) else value


def _refused(value: Tick | Received, reason: str, detail: str) -> DeadLetter:
    """The dead letter of a tick the bar step refuses: the original message where it came from Kafka, else
    (replay) the tick in its wire form."""
    if isinstance(value, Received):
        return DeadLetter.of(
            value.raw,
            reason,
            detail,
            time.time_ns(),
            key=value.symbol,
            topic=value.topic,
            partition=value.partition,
            offset=value.offset,
        )
    return DeadLetter.of(encode(value), reason, detail, time.time_ns(), key=value.symbol)
