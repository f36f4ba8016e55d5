"""Replaying a tick table into Kafka, as fast as possible or at a multiple of real time (live simulation)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa

from conditioning.features.ssr_luld import session_day
from flows.kafka import CheckedProducer, ensure_topics
from schemas.canonical import ReferenceRow
from schemas.ticks import Quote, Reference, Trade


def table_ticks(table: pa.Table, reference: Sequence[ReferenceRow] = ()) -> Iterator[Trade | Quote | Reference]:
    """Reference rows first (stamped at the start of their date), then the table's rows as wire ticks."""
    for r in reference:
        yield Reference(symbol=r.symbol, ts_ns=session_day(r.date).start_ns, prev_close=r.prev_close, tier=r.tier,
                        date=r.date)
    for batch in table.to_batches(max_chunksize=65_536):
        c = batch.to_pydict()
        for i in range(batch.num_rows):
            if c["kind"][i] == "trade":
                yield Trade(symbol=c["symbol"][i], ts_ns=c["ts_ns"][i], price=c["price"][i], size=c["size"][i])
            else:
                yield Quote(symbol=c["symbol"][i], ts_ns=c["ts_ns"][i], bid=c["bid"][i], bid_size=c["bid_size"][i],
                            ask=c["ask"][i], ask_size=c["ask_size"][i])


def produce_table(
    conf: Mapping[str, str],
    topic: str,
    table: pa.Table,
    reference: Sequence[ReferenceRow] = (),
    *,
    speed: float = 0.0,
    partitions: int = 3,
) -> int:
    """Produce every tick keyed by symbol; ``speed`` > 0 paces event time at ``speed`` x real time."""
    ensure_topics(conf, [topic], partitions)
    producer = CheckedProducer(conf)
    n, t0_event, t0_wall = 0, None, time.monotonic()
    for tick in table_ticks(table, reference):
        if speed > 0 and not isinstance(tick, Reference):
            t0_event = t0_event or tick.ts_ns
            ahead = (tick.ts_ns - t0_event) / 1e9 / speed - (time.monotonic() - t0_wall)
            if ahead > 0:
                producer.poll(ahead)
        producer.produce(topic, tick.model_dump_json(exclude_none=True).encode(), key=tick.symbol)
        n += 1
    producer.flush()
    return n
