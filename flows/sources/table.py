"""Bytewax source over a canonical tick table (replay of files and simulations).

Rows are turned into the same tick models the Kafka path decodes, in file order (the table is
time-sorted), with two additions: the reference rows of every trading date up front (each stamped at the
start of its date, so the per-symbol reorder buffer applies it at the right moment), and the file's
event-time clock (flows/clock.py, no lateness: the file is sorted): whenever the stream crosses a bar
boundary, every symbol seen so far gets a heartbeat, so quiet symbols close their bars exactly as they would
with a continuous feed. A row that fails validation becomes a dead letter naming the file row (a reference
row: ``reference SYMBOL DATE``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pydantic
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from tqdm import tqdm

from flows.bars import Heartbeat
from flows.clock import EventClock
from schemas.records import DeadLetter
from schemas.reference import ReferenceRow
from schemas.session import session_day
from schemas.ticks import DEFAULT_LIMITS, Quote, Reference, Trade, WireLimits, reason_of


def reference_tick(row: ReferenceRow, limits: WireLimits = DEFAULT_LIMITS) -> Reference:
    """A reference row as the wire tick, stamped at the start (00:00 ET) of its trading date; raises
    ``pydantic.ValidationError`` for a row the wire format refuses (a prior close outside ``limits``)."""
    fields = {
        "symbol": row.symbol,
        "ts_ns": session_day(row.date).start_ns,
        "prev_close": row.prev_close,
        "tier": row.tier,
        "date": row.date,
    }
    return Reference.model_validate(fields, context=limits)


def row_tick(columns: dict[str, list], i: int, limits: WireLimits = DEFAULT_LIMITS) -> Trade | Quote:
    """Row ``i`` of a canonical table (as ``{column: values}``) as a wire tick validated as the decoder
    validates one (``limits`` included); raises ``pydantic.ValidationError`` for a row the wire format
    refuses (e.g. a one-sided quote)."""
    c = columns
    if c["kind"][i] == "trade":
        fields = {"symbol": c["symbol"][i], "ts_ns": c["ts_ns"][i], "price": c["price"][i], "size": c["size"][i]}
        return Trade.model_validate(fields, context=limits)
    fields = {
        "symbol": c["symbol"][i],
        "ts_ns": c["ts_ns"][i],
        "bid": c["bid"][i],
        "bid_size": c["bid_size"][i],
        "ask": c["ask"][i],
        "ask_size": c["ask_size"][i],
    }
    return Quote.model_validate(fields, context=limits)


@dataclass(frozen=True)
class ReplayInput:
    ticks: pa.Table
    reference: tuple[ReferenceRow, ...]
    bar_ns: int
    source_name: str
    #: pipeline.evict_idle_s in ns (flows/clock.py)
    evict_after_ns: int | None = None
    batch_size: int = 4096
    limits: WireLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        # The event-time clock ticks at the first row of each bar: it is only true of a time-sorted table.
        ts = self.ticks.column("ts_ns").to_numpy()
        if ts.size and (np.diff(ts) < 0).any():
            first = int(np.flatnonzero(np.diff(ts) < 0)[0]) + 1
            raise ValueError(
                f"{self.source_name}: replay needs ticks sorted by ts_ns, row {first} is earlier than "
                "the row before it (schemas.canonical.sort_ticks sorts a table)"
            )


class _TablePartition(StatefulSourcePartition):
    def __init__(self, inp: ReplayInput, resume: tuple[int, EventClock] | None):
        self.inp = inp
        self.cols = {name: inp.ticks.column(name).to_pylist() for name in inp.ticks.column_names}
        self.n = inp.ticks.num_rows
        self.row, self.clock = resume or (
            -1,
            EventClock(TableSource.PART, 1, inp.bar_ns, evict_after_ns=inp.evict_after_ns),
        )
        # Progress on a terminal only (disable=None): logs and CI stay clean.
        self.progress = tqdm(
            total=self.n,
            initial=max(self.row, 0),
            unit="tick",
            unit_scale=True,
            desc="replay",
            disable=None,
            leave=False,
        )

    def next_batch(self) -> list[Trade | Quote | Reference | DeadLetter | Heartbeat]:
        out: list[Trade | Quote | Reference | DeadLetter | Heartbeat] = []
        if self.row == -1:
            self.row = 0
            for r in self.inp.reference:
                try:
                    out.append(reference_tick(r, self.inp.limits))
                except pydantic.ValidationError as err:
                    out.append(_dead(r, err, f"reference {r.symbol} {r.date}"))
            return out
        if self.row >= self.n:
            self.progress.close()
            raise StopIteration
        c = self.cols
        stop = min(self.n, self.row + self.inp.batch_size)
        for i in range(self.row, stop):
            try:
                tick = row_tick(c, i, self.inp.limits)
            except pydantic.ValidationError as err:
                out.append(_dead({k: c[k][i] for k in c}, err, f"{self.inp.source_name}:row {i}"))
                continue
            out.extend(self.clock.observe(tick))
            out.append(tick)
        self.progress.update(stop - self.row)
        self.row = stop
        return out

    def snapshot(self) -> tuple[int, EventClock]:
        return (self.row, copy.deepcopy(self.clock))


def _dead(row: object, err: pydantic.ValidationError, source: str) -> DeadLetter:
    return DeadLetter.of(
        repr(row).encode(), reason_of(err), "; ".join(str(err).splitlines()[:3]), time.time_ns(), source=source
    )


class TableSource(FixedPartitionedSource):
    """One partition: the file is time-ordered, so one reader keeps it so; symbols fan out downstream."""

    PART = "ticks"

    def __init__(self, inp: ReplayInput):
        self.inp = inp

    def list_parts(self) -> list[str]:
        return [self.PART]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _TablePartition:
        return _TablePartition(self.inp, resume_state)
