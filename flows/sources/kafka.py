"""Live input: the ticks topic, one Bytewax partition per Kafka partition, each with its event-time clock.

Each partition owns a consumer assigned to its Kafka partition (no consumer group: offsets live in Bytewax's
recovery snapshots, together with the partition's :class:`~flows.clock.EventClock`). A poll takes what the
consumer has fetched, decodes every message (a bad one becomes a dead letter with its partition, offset and
original bytes) and puts the clock's heartbeats at the stream positions where its watermark crossed a bar
boundary. Everything it emits is therefore a function of the partition's content and the offset it resumed
from, which is what makes a resumed run's output equal to an uninterrupted one's.

A batch of trades and quotes that all decode, under their symbols' keys and near the clock, goes out as each
symbol's :class:`~flows.bars.TickBlock` of columns between two heartbeats, carrying its messages (the bar step
takes an in-order block whole, or else its rows as received); the clock finds where its heartbeats go with one
pass over the batch's times instead of a step per tick. Any other batch (a refused message, a consumer error, a
status or reference tick, a tick far ahead) goes message by message: the same output, item for item
(tests/flows/test_kafka_blocks.py).

The wall clock enters in one place only. At the head of the partition, with nothing more to read, event time
has moved on at least as far as the wall clock since the newest tick (less ``pipeline.idle_close_ms`` of
grace for feed delays), so quiet symbols still close their bars. That is taken only while the broker
confirms it: the consumer reached the end of the partition (librdkafka's partition-EOF event) with nothing
read since, and the broker answered a watermark query at most a second ago without showing more data. A
frozen broker confirms nothing, so a stall closes no bar and makes no held-back tick late. A broker that does
not answer is reported after ``kafka.stall_warning_s`` and, after ``kafka.unavailable_after_s``, ends the run
with a clear error (flows/lifecycle.py).

The watermark query goes through a client of its own (:attr:`_TickPartition.head`): a broker serves one
request of a connection at a time, and at the head the consumer's connection holds a fetch that waits up to
``kafka.fetch_wait_max_ms`` for data, so a query sent behind it blocked the worker, every partition of it, for
about that long (450 ms of every idle second per partition, measured on the embedded broker: a tailing run fell
minutes behind). On a connection of its own it answers in about a millisecond.
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bytewax.inputs import (
    AbortExecution,
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from conditioning.features.columns import Ticks
from flows.bars import Messages, Received, TickBlock, by_symbol, columns_of
from flows.clock import EventClock
from flows.config import AppConfig
from flows.kafka import client_callbacks
from flows.lifecycle import STOP, BrokerUnavailableError, BrokerWatch
from flows.metrics import METRICS
from schemas.errors import HrmcondError, TickDecodeError
from schemas.records import DeadLetter
from schemas.ticks import DEFAULT_LIMITS, WireLimits
from schemas.wire import WireQuote, WireTick, WireTrade, decode_batch, decode_each

log = logging.getLogger(__name__)

_EOF = KafkaError._PARTITION_EOF
#: The kinds of tick a :class:`~flows.bars.TickBlock` holds.
_BLOCK_KINDS = frozenset((WireTrade, WireQuote))
#: Most messages taken per poll.
BATCH = 1_000
#: How long a partition with nothing to read waits before it is polled again (Bytewax would spin otherwise).
IDLE_POLL = timedelta(milliseconds=5)
#: How often, at most, an idle partition asks the broker whether it is at the head, and for how long.
HEAD_CHECK_S = 1.0
HEAD_CHECK_TIMEOUT_S = 0.5
#: How often a worker without tick partitions looks for a stop request.
STOP_POLL = timedelta(milliseconds=100)


def decode_messages(msgs: list[Message], limits: WireLimits = DEFAULT_LIMITS) -> list[Received | DeadLetter]:
    """Consumed messages -> for each, in order, a tick with its message (:class:`~flows.bars.Received`) or a
    dead letter that says why (librdkafka errors included). The batch is decoded in one call; where any message
    in it is refused, message by message, so each bad one gets its own reason."""
    raws = [msg.value() or b"" for msg in msgs]
    decoded: list[WireTick | TickDecodeError]
    try:
        if any(msg.error() is not None for msg in msgs):
            raise ValueError("a consumer error in the batch")
        decoded = list(decode_batch(raws, limits))
    except ValueError:
        decoded = decode_each(raws, limits)
    now = time.time_ns()
    out: list[Received | DeadLetter] = []
    for msg, raw, tick in zip(msgs, raws, decoded, strict=True):
        err = msg.error()
        if err is not None:
            METRICS.consumer_errors.labels(err.name()).inc()
            log.error("Kafka consumer error %s (code %s): %s", err.name(), err.code(), err.str())
            out.append(
                DeadLetter.of(
                    raw,
                    "consumer_error",
                    f"{err.name()}: {err.str()}",
                    now,
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                )
            )
            continue
        raw_key = msg.key()
        key = raw_key.decode(errors="replace") if raw_key is not None else None
        if isinstance(tick, TickDecodeError) or key != tick.symbol:
            out.append(_refused(msg, raw, key, tick, now))
        else:
            # a delivered message has its topic, partition and offset (librdkafka's stubs say "or None")
            out.append(Received(tick, raw, msg.topic(), msg.partition(), msg.offset()))  # type: ignore[arg-type]
    return out


def _within(c: Ticks, limits: WireLimits) -> bool:
    """:func:`schemas.wire.within` of every row of trades and quotes, a column at a time (NaN, a trade's bid
    and ask and a quote's price and size, compares false)."""
    lo, hi, size = limits.min_price, limits.max_price, limits.max_size
    trade = (c.price >= lo) & (c.price <= hi) & (c.size <= size)
    quote = (c.bid >= lo) & (c.bid <= hi) & (c.ask >= lo) & (c.ask <= hi) & (np.maximum(c.bid_size, c.ask_size) <= size)
    return bool(np.where(c.is_trade, trade, quote).all())


def _refused(msg: Message, raw: bytes, key: str | None, tick: WireTick | TickDecodeError, now: int) -> DeadLetter:
    where: dict[str, Any] = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
    if isinstance(tick, TickDecodeError):
        return DeadLetter.of(raw, tick.reason, tick.detail, now, key=key, **where)
    # The key decides the partition, and a symbol's ticks are only in order within one partition: a tick without
    # the key, or with another one, arrives out of order with the rest and moves the symbol's clock (73 key-less
    # messages, 0.15% of a day, once erased 57% of its contexts as late).
    if key is None:
        return DeadLetter.of(raw, "missing_key", f"no message key (must be the symbol {tick.symbol!r})", now, **where)
    return DeadLetter.of(raw, "key_mismatch", f"message key {key!r} != symbol {tick.symbol!r}", now, key=key, **where)


def decode_message(msg: Message, limits: WireLimits = DEFAULT_LIMITS) -> list[Received | DeadLetter]:
    """One consumed message (:func:`decode_messages`)."""
    return decode_messages([msg], limits)


class _TickPartition(StatefulSourcePartition):
    def __init__(
        self,
        cfg: AppConfig,
        topic: str,
        partition: int,
        clocks: int,
        until_eof: bool,
        resume: tuple[int, EventClock] | None,
    ):
        k, p = cfg.kafka, cfg.pipeline
        self.name = f"{topic}[{partition}]"
        self.consumer = Consumer(
            {
                "fetch.wait.max.ms": k.fetch_wait_max_ms,  # before the passed-through settings: those win
                **k.client_config(),
                **client_callbacks(),
                "group.id": "hrmcond-unused",  # required by librdkafka; assign() uses no group
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,  # the head of the partition: --until-eof ends there, live idles there
            }
        )
        #: Asks for the partition's high watermark (module docstring: not behind the consumer's waiting fetch).
        self.head = Consumer({**k.client_config(), **client_callbacks(), "group.id": "hrmcond-unused"})
        self.tp = TopicPartition(topic, partition)
        self.offset, self.clock = resume or (
            OFFSET_BEGINNING,
            EventClock(
                self.name,
                clocks,
                p.bar_ms * 10**6,
                p.allowed_lateness_ms * 10**6,
                p.max_ahead_ms * 10**6,
                None if p.evict_idle_s is None else p.evict_idle_s * 10**9,
            ),
        )
        self.until_eof = until_eof
        self.limits = p.wire
        #: Reached the end of the partition, nothing read since.
        self.at_head = False
        self.idle_close_ns = p.idle_close_ms * 10**6
        self.consumer.assign([TopicPartition(topic, partition, self.offset)])
        self.watch = BrokerWatch(self.name, k.stall_warning_s, k.unavailable_after_s)
        #: The clock when the newest tick was read, and the monotonic time it was read (after a restart: now,
        #: the clock stood still meanwhile): the base from which an idle partition's event time runs on.
        self.newest_ns, self.newest_at = self.clock.now_ns, time.monotonic()
        self.checked_at = 0.0
        self.awake: datetime | None = None

    def next_batch(self) -> list:
        if STOP.requested.is_set():
            raise AbortExecution()
        if self.until_eof and self.at_head:
            raise StopIteration()
        msgs = self.consumer.consume(BATCH, 0)
        now = time.monotonic()
        if not msgs:
            self.awake = datetime.now(UTC) + IDLE_POLL
            return self._idle(now)
        self.awake = None
        self.watch.answered(now)
        # At the head when the batch ends with a partition-EOF event (messages after one: more arrived meanwhile).
        errors = [(i, err) for i, msg in enumerate(msgs) if (err := msg.error()) is not None]
        eof = {i for i, err in errors if err.code() == _EOF}
        self.at_head = len(msgs) - 1 in eof
        msgs = [msg for i, msg in enumerate(msgs) if i not in eof] if eof else msgs
        for msg in reversed(msgs):
            if msg.error() is None:
                offset = msg.offset()
                assert offset is not None  # a delivered message has one
                self.offset = offset + 1
                break
        out = self._blocks(msgs) if len(errors) == len(eof) else None  # (consumer errors: one by one)
        if out is None:  # message by message
            out = []
            for item in decode_messages(msgs, self.limits):
                if isinstance(item, Received):
                    out.extend(self.clock.observe(item.tick))
                out.append(item)
            out = by_symbol(out)
        self.newest_ns, self.newest_at = self.clock.now_ns, now
        # the high watermark of the last fetch response: known locally, no request
        _, high = self.consumer.get_watermark_offsets(self.tp, cached=True)
        if high >= 0 and self.offset >= 0:
            METRICS.consumer_lag.labels(self.name).set(max(0, high - self.offset))
        return out

    def _blocks(self, msgs: list[Message]) -> list | None:
        """The batch as :func:`~flows.bars.by_symbol` lists of it would be, but each symbol's ticks between two
        heartbeats as one :class:`~flows.bars.TickBlock` (with its messages), and the clock moved once per
        heartbeat, not per tick: where every message is a trade or a quote that decodes, within
        ``pipeline.wire``, under its symbol's key, and none is far ahead of the clock (so each tick moves it, as
        :meth:`EventClock.observe` would). None, having done nothing, where the batch is not like that."""
        clock = self.clock
        if not clock.now_ns or not msgs:  # (a partition's first tick may be far ahead: it waits for the next)
            return None
        raws = [msg.value() or b"" for msg in msgs]
        try:
            ticks = decode_batch(raws, None)
        except ValueError:
            return None
        if not set(map(type, ticks)) <= _BLOCK_KINDS:
            return None
        symbols = [tick.symbol for tick in ticks]
        names = list(dict.fromkeys(symbols))
        index = {symbol: code for code, symbol in enumerate(names)}
        encoded = {symbol: symbol.encode() for symbol in names}
        if [msg.key() for msg in msgs] != list(map(encoded.__getitem__, symbols)):
            return None  # a message under another key, or none
        codes = np.array(list(map(index.__getitem__, symbols)), np.int64)
        columns = columns_of(ticks)
        if not _within(columns, self.limits):
            return None
        ts = columns.ts_ns
        # the clock before each tick, and after the last: the newest time so far
        before = np.maximum.accumulate(np.concatenate(([clock.now_ns], ts)))
        if clock.max_ahead_ns is not None and (ts > before[:-1] + clock.max_ahead_ns).any():
            return None
        # the ticks at which the watermark reaches the next bar boundary: its heartbeats go before them
        watermark, cuts, next_beat = before[1:] - clock.lateness_ns, [], clock.next_beat_ns
        while (i := int(np.searchsorted(watermark, next_beat))) < len(ts):
            cuts.append(i)
            next_beat = int(watermark[i]) // clock.bar_ns * clock.bar_ns + clock.bar_ns
        offsets = [msg.offset() for msg in msgs]
        lists: dict[str, list] = {}
        for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(ts)], strict=True)):
            if k:  # the heartbeats before tick a, with the clock as observing it would leave it
                clock.now_ns = int(before[a])
                for beat in clock.advance(int(ts[a])):
                    lists.setdefault(beat.symbol, []).append(beat)
            if a == b:  # (the first tick crossed a boundary)
                continue
            # ticks a..b-1 grouped by symbol, in stream order within each
            order = a + np.argsort(codes[a:b], kind="stable")
            grouped, sorted_columns, at = codes[order], [c[order] for c in columns.arrays()], order.tolist()
            starts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1]))).tolist() + [b - a]
            for lo, hi in zip(starts[:-1], starts[1:], strict=True):
                rows, symbol = at[lo:hi], names[int(grouped[lo])]
                origin = Messages(
                    [ticks[j] for j in rows],
                    [raws[j] for j in rows],
                    self.tp.topic,
                    self.tp.partition,
                    [offsets[j] for j in rows],
                )
                block = TickBlock(symbol, Ticks(*(c[lo:hi] for c in sorted_columns)), origin)
                lists.setdefault(symbol, []).append(block)
                clock.symbols[symbol] = max(clock.symbols.get(symbol, 0), int(block.columns.ts_ns.max()))
        clock.now_ns = int(before[-1])
        clock.suspect_ns, clock.suspects_in_row = 0, 0  # every tick was near the clock
        return list(lists.items())

    def _idle(self, now: float) -> list:
        """Nothing was read: at a confirmed head, let event time run on with the wall clock."""
        if now - self.checked_at < HEAD_CHECK_S:
            return []
        self.checked_at = now
        try:
            _, high = self.head.get_watermark_offsets(self.tp, timeout=HEAD_CHECK_TIMEOUT_S, cached=False)
        except KafkaException as err:
            if self.watch.silent(now, err.args[0].str()):
                STOP.request(
                    BrokerUnavailableError(
                        f"Kafka has not answered for {now - self.watch.last_answer:.0f} s (reading {self.name}); "
                        "stopping. Restart with the same --recovery-dir to resume where it stopped"
                    )
                )
                raise AbortExecution() from None
            return []
        self.watch.answered(now)
        if not self.at_head or self.until_eof or high > max(self.offset, 0):
            return []  # more is on its way: the clock moves with it
        if not self.newest_ns:  # a partition that never had a tick: event time is the wall clock
            now_ns = time.time_ns() - self.idle_close_ns
        else:
            now_ns = self.newest_ns + int((now - self.newest_at) * 1e9) - self.idle_close_ns
        return by_symbol(self.clock.advance(now_ns + self.clock.lateness_ns))

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> tuple[int, EventClock]:
        return self.offset, copy.deepcopy(self.clock)

    def close(self) -> None:
        self.consumer.close()
        self.head.close()


class TickSource(FixedPartitionedSource):
    """The ticks topic; ``until_eof`` stops each partition at the end it had when the run started."""

    def __init__(self, cfg: AppConfig, *, until_eof: bool):
        self.cfg = cfg
        self.until_eof = until_eof

    def _partitions(self) -> list[int]:
        k = self.cfg.kafka
        admin = AdminClient({**k.client_config(), **client_callbacks()})
        try:
            meta = admin.list_topics(k.topics.ticks, timeout=k.unavailable_after_s).topics[k.topics.ticks]
        except KafkaException as err:
            raise BrokerUnavailableError(
                f"cannot list the partitions of {k.topics.ticks!r} at {k.bootstrap_servers}: {err.args[0].str()}"
            ) from None
        if meta.error is not None:
            raise HrmcondError(f"topic {k.topics.ticks!r}: {meta.error.str()}")
        return sorted(meta.partitions)

    def list_parts(self) -> list[str]:
        return [str(p) for p in self._partitions()]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _TickPartition:
        clocks = len(self._partitions())
        return _TickPartition(
            self.cfg, self.cfg.kafka.topics.ticks, int(for_part), clocks, self.until_eof, resume_state
        )


class _StopWatchPartition(StatelessSourcePartition):
    def next_batch(self) -> list:
        if STOP.requested.is_set():
            raise AbortExecution()
        return []

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + STOP_POLL


class StopWatch(DynamicSource):
    """One idle input per worker that carries out a stop request (flows/lifecycle.py): a worker that owns no
    partition of the ticks topic (more worker processes than partitions, or an uneven assignment) never polls
    the tick source, and without it would wait for ever after the others stopped."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StopWatchPartition:
        return _StopWatchPartition()
