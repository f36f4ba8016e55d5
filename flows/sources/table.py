"""Bytewax source over a canonical tick table (replay of files and simulations).

Rows stand for the same ticks the Kafka path decodes (schemas/wire.py), in file order (the table is
time-sorted), a record batch at a time: the batch is validated a column at a time (:func:`valid_rows`), and
a row that fails goes to the pydantic model, which says why. Two additions: the reference rows of every
trading date up front (each stamped at the start of its date, so the per-symbol reorder buffer applies it at
the right moment), and the file's event-time clock (flows/clock.py, no lateness: the file is sorted):
whenever the stream crosses a bar boundary, every symbol seen so far gets a heartbeat, so quiet symbols close
their bars exactly as they would with a continuous feed. Each batch goes out as per-symbol lists (as
flows/bars.py ``by_symbol`` makes them): a symbol's valid rows between two heartbeats as one
:class:`~flows.bars.TickBlock` of columns, never a Python object per row. A row that fails validation becomes a
dead letter naming the file row (a reference row: ``reference SYMBOL DATE``).
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from tqdm import tqdm

from conditioning.features.columns import Ticks
from flows.bars import Heartbeat, TickBlock, by_symbol
from flows.clock import EventClock
from schemas.records import DeadLetter
from schemas.reference import ReferenceRow
from schemas.session import session_day
from schemas.ticks import DEFAULT_LIMITS, MAX_TS_NS, MIN_TS_NS, Quote, Reference, Trade, WireLimits, reason_of
from schemas.wire import WireQuote, WireTrade


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
    batch_size: int = 16_384
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


def valid_rows(batch: pa.Table | pa.RecordBatch, limits: WireLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Rows of a canonical table that :func:`row_tick` accepts, judged a column at a time: a plausible
    ``ts_ns``, a well-formed symbol, and for a trade (``kind`` ``trade``) a price within ``limits`` and a
    positive size up to ``limits.max_size``, for a quote (any other kind) both prices within ``limits`` and
    both sizes from 0 up to it; every value finite and present. [rows] bool."""
    symbols = batch.column("symbol")
    fine = {s for s in pc.unique(symbols).to_pylist() if s is not None and _SYMBOL.fullmatch(s) and len(s) <= 32}
    ts = batch.column("ts_ns").to_numpy(zero_copy_only=False)
    x = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in _VALUES}  # null -> NaN

    def price(v: np.ndarray) -> np.ndarray:
        return np.isfinite(v) & (v >= limits.min_price) & (v <= limits.max_price)

    def size(v: np.ndarray, positive: bool) -> np.ndarray:
        return np.isfinite(v) & ((v > 0) if positive else (v >= 0)) & (v <= limits.max_size)

    trade = price(x["price"]) & size(x["size"], True)
    quote = price(x["bid"]) & price(x["ask"]) & size(x["bid_size"], False) & size(x["ask_size"], False)
    is_trade = pc.equal(batch.column("kind"), "trade").to_numpy(zero_copy_only=False)
    known = pc.is_in(symbols, value_set=pa.array(sorted(fine), pa.string())).to_numpy(zero_copy_only=False)
    return (ts >= MIN_TS_NS) & (ts < MAX_TS_NS) & known & np.where(is_trade, trade, quote)


_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_/]*")
_VALUES = ("price", "size", "bid", "bid_size", "ask", "ask_size")


class _TablePartition(StatefulSourcePartition):
    def __init__(self, inp: ReplayInput, resume: tuple[int, EventClock] | None):
        self.inp = inp
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

    def next_batch(self) -> list:
        out: list[Trade | Quote | Reference | WireTrade | WireQuote | DeadLetter | Heartbeat] = []
        if self.row == -1:
            self.row = 0
            for r in self.inp.reference:
                try:
                    out.append(reference_tick(r, self.inp.limits))
                except pydantic.ValidationError as err:
                    out.append(_dead(r, err, f"reference {r.symbol} {r.date}"))
            return by_symbol(out)
        if self.row >= self.n:
            self.progress.close()
            raise StopIteration
        batch = self.inp.ticks.slice(self.row, self.inp.batch_size)
        dead, lists = self._batch(batch)
        self.progress.update(batch.num_rows)
        self.row += batch.num_rows
        return dead + list(lists.items())

    def _batch(self, batch: pa.Table) -> tuple[list, dict[str, list]]:
        """A record batch as the dead letters of its refused rows and, per symbol, its heartbeats and its ticks:
        each run of valid rows between two bar boundaries of the clock (or a refused row) as one
        :class:`TickBlock` per symbol, a row that needs the pydantic model as its tick; in stream order."""
        dead: list[DeadLetter] = []
        lists: dict[str, list] = {}
        n = batch.num_rows
        valid = valid_rows(batch, self.inp.limits)
        ts = batch.column("ts_ns").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        codes_enc = pc.dictionary_encode(pc.cast(batch.column("symbol"), pa.string()).combine_chunks())
        codes = codes_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = codes_enc.dictionary.to_pylist()
        # rows grouped by symbol, in row order within each: (symbol code, row) is sorted
        order = np.argsort(codes, kind="stable")
        key = codes[order] * n + order
        grouped = [ts[order], pc.equal(batch.column("kind"), "trade").to_numpy(zero_copy_only=False)[order]]
        grouped += [batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[order] for c in _VALUES]
        # runs: cut where the clock's watermark enters another bar, and around each refused row
        cell = (ts - self.clock.lateness_ns) // self.inp.bar_ns
        bad = np.flatnonzero(~valid)
        cuts = np.union1d(np.flatnonzero(cell[1:] != cell[:-1]) + 1, np.concatenate((bad, bad + 1)))
        bounds = [0, *cuts[(cuts > 0) & (cuts < n)].tolist(), n]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            if not valid[a]:  # one refused row: the model says why (or takes it after all)
                row = batch.slice(a, 1).to_pylist()[0]
                try:
                    tick = row_tick({k: [v] for k, v in row.items()}, 0, self.inp.limits)
                except pydantic.ValidationError as err:
                    dead.append(_dead(row, err, f"{self.inp.source_name}:row {self.row + a}"))
                    continue
                for beat in self.clock.observe(tick):
                    lists.setdefault(beat.symbol, []).append(beat)
                lists.setdefault(tick.symbol, []).append(tick)
                continue
            present = np.unique(codes[a:b])
            lo = np.searchsorted(key, present * n + a).tolist()
            hi = np.searchsorted(key, present * n + b).tolist()
            symbols = [names[c] for c in present.tolist()]
            newest = {symbol: int(grouped[0][h - 1]) for symbol, h in zip(symbols, hi, strict=True)}
            for beat in self.clock.observe_run(int(ts[a]), newest):
                lists.setdefault(beat.symbol, []).append(beat)
            for symbol, i, j in zip(symbols, lo, hi, strict=True):
                lists.setdefault(symbol, []).append(TickBlock(symbol, Ticks(*(c[i:j] for c in grouped))))
        return dead, lists

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
