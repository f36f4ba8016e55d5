"""Replaying a tick table into Kafka, as fast as possible or at a multiple of real time (live simulation)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pydantic

from flows.kafka import CheckedProducer, ensure_topics
from flows.sources.table import reference_tick, row_tick
from schemas.errors import HrmcondError
from schemas.reference import ReferenceRow
from schemas.ticks import Quote, Reference, Trade


def table_ticks(table: pa.Table, reference: Sequence[ReferenceRow] = ()) -> Iterator[Trade | Quote | Reference]:
    """Reference rows first (stamped at the start of their date), then the table's rows as wire ticks, each
    numbered per symbol (``seq`` 0, 1, 2, ... in this order): the pipeline dead-letters a copy of a tick it
    already has, e.g. when a file is produced twice (schemas/ticks.py).

    A row the wire format refuses stops the replay with its row number: a producer must not publish a file
    it cannot represent faithfully (``hrmcond replay`` dead-letters such rows instead)."""
    seqs: Counter[str] = Counter()
    for tick in _wire_ticks(table, reference):
        yield tick.model_copy(update={"seq": seqs[tick.symbol]})
        seqs[tick.symbol] += 1


def _wire_ticks(table: pa.Table, reference: Sequence[ReferenceRow]) -> Iterator[Trade | Quote | Reference]:
    for r in reference:
        try:
            yield reference_tick(r)
        except pydantic.ValidationError as err:
            raise HrmcondError(f"reference {r.symbol} {r.date} cannot be published: {_why(err)}") from err
    offset = 0
    for batch in table.to_batches(max_chunksize=65_536):
        columns = batch.to_pydict()
        for i in range(batch.num_rows):
            try:
                yield row_tick(columns, i)
            except pydantic.ValidationError as err:
                raise HrmcondError(f"row {offset + i} cannot be published: {_why(err)}") from err
        offset += batch.num_rows


def _why(err: pydantic.ValidationError) -> str:
    return "; ".join(str(err).splitlines()[:3])


def produce_table(
    conf: Mapping[str, str],
    topic: str,
    table: pa.Table,
    reference: Sequence[ReferenceRow] = (),
    *,
    speed: float = 0.0,
    partitions: int = 3,
    unavailable_after_s: float = 30.0,
) -> int:
    """Produce every tick keyed by symbol; ``speed`` > 0 paces event time at ``speed`` x real time.

    Each tick leaves at ``t0 + (ts_ns - first ts_ns) / speed`` of wall time. The wait serves delivery reports:
    ``poll`` blocks until its timeout or until a report arrives, so it is repeated until the tick's time
    (a single ``poll`` returned at the first report and ran ~46x too fast at ``--speed 1``). A cluster silent
    for ``unavailable_after_s`` at the start ends it with :class:`BrokerUnavailableError`.
    """
    ensure_topics(conf, [topic], partitions, timeout_s=unavailable_after_s)
    producer = CheckedProducer(conf)
    n, t0_event, t0_wall = 0, None, time.monotonic()
    for tick in table_ticks(table, reference):
        if speed > 0 and not isinstance(tick, Reference):
            t0_event = t0_event or tick.ts_ns
            due = t0_wall + (tick.ts_ns - t0_event) / 1e9 / speed  # monotonic seconds
            while (ahead := due - time.monotonic()) > 0:
                producer.poll(ahead)
        producer.produce(topic, tick.model_dump_json(exclude_none=True).encode(), key=tick.symbol)
        n += 1
    producer.flush()
    return n
