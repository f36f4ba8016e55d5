"""Canonical tick table: the one file format for replay and simulation, plus the reference-data CSV.

Tick table (CSV, gzip CSV or Parquet, chosen by the file suffix), one row per event, columns in this order::

    ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size
    1514903400123000000,XXX,trade,158.3,100,,,,
    1514903400125000000,XXX,quote,,,158.29,300,158.31,200

- ``ts_ns``: int64 nanoseconds since the Unix epoch, UTC (event time as the source stamped it).
- ``kind``: ``trade`` (``price``, ``size`` set; quote columns empty) or ``quote`` (the NBBO after the event:
  ``bid``/``bid_size`` and/or ``ask``/``ask_size`` set; ``price``/``size`` empty). An empty quote side means
  "no quote on that side" (e.g. an empty book side); a quote row has at least one side.
- Prices in USD (float64), sizes in shares (float64, so that fractional quantities of non-equity instruments
  fit; equities carry whole numbers). A crossed quote (bid > ask) is accepted: real NBBOs cross briefly, and
  the feature estimators filter them (Holden & Jacobsen 2014).
- Row order: stable by ``ts_ns`` (rows with equal timestamps keep their file order). :func:`read_ticks` and
  :func:`write_ticks` both sort, so a file written here is already in canonical order.

Reference data (CSV ``symbol,date,prev_close,tier``): for trading date ``date`` (ISO ``YYYY-MM-DD``, the
US/Eastern trading day it applies to), ``prev_close`` is the symbol's prior-session closing price in USD (the
SEC Rule 201 trigger base and the LULD price bucket) and ``tier`` its LULD tier (1 or 2).

Bad input raises :class:`TickFileError` naming the file, the data row (1-based, header not counted), the
column and the value, before anything downstream sees the table.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from schemas.errors import HrmcondError
from schemas.ticks import MAX_TS_NS, MIN_TS_NS

CANONICAL_SCHEMA = pa.schema(
    [
        pa.field("ts_ns", pa.int64(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("size", pa.float64()),
        pa.field("bid", pa.float64()),
        pa.field("bid_size", pa.float64()),
        pa.field("ask", pa.float64()),
        pa.field("ask_size", pa.float64()),
    ]
)
TRADE = "trade"
QUOTE = "quote"
REFERENCE_COLUMNS = ("symbol", "date", "prev_close", "tier")
LULD_TIERS = (1, 2)
#: US equity market local time (sessions, LOBSTER timestamps, TAQ offsets).
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: How many problems one error message lists (the first ones in file order).
_MAX_REPORTED = 5


class TickFileError(HrmcondError, ValueError):
    """A tick, reference or vendor file cannot be read; the message names the file, row, column and value."""


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """Reference data of one symbol for one trading date (see the module docstring for the meaning)."""

    symbol: str
    date: dt.date
    prev_close: float  # USD
    tier: int  # LULD tier, 1 or 2


def new_york_ns(date: dt.date, wall_clock: dt.time) -> int:
    """Nanoseconds since the Unix epoch (UTC) of a New York wall-clock time on ``date`` (tz database DST)."""
    since_epoch = dt.datetime.combine(date, wall_clock, tzinfo=NEW_YORK) - _EPOCH
    return (since_epoch.days * 86_400 + since_epoch.seconds) * 1_000_000_000 + since_epoch.microseconds * 1_000


REGULAR_OPEN = dt.time(9, 30)
REGULAR_CLOSE = dt.time(16, 0)
_NS_PER_DAY = 86_400 * 1_000_000_000
#: New York is UTC-4 or UTC-5: shifting by 4 h maps every instant of a regular session onto its NY date.
_SESSION_DATE_SHIFT_NS = 4 * 3_600 * 1_000_000_000


def session_mask(
    ts_ns: np.ndarray, open_time: dt.time = REGULAR_OPEN, close_time: dt.time = REGULAR_CLOSE
) -> np.ndarray:
    """Boolean mask of the timestamps (int64 ns UTC) inside ``[open_time, close_time)`` New York time.

    Vectorised batch helper (tests, offline filtering); the live dataflow decides its session from config.
    Holidays and early closes are not known here: a half-day session needs its own ``close_time``.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    day = (ts_ns - _SESSION_DATE_SHIFT_NS) // _NS_PER_DAY
    mask = np.zeros(ts_ns.shape, dtype=bool)
    for d in np.unique(day):
        date = dt.date(1970, 1, 1) + dt.timedelta(days=int(d))
        on_day = day == d
        mask[on_day] = (ts_ns[on_day] >= new_york_ns(date, open_time)) & (ts_ns[on_day] < new_york_ns(date, close_time))
    return mask


# ---------------------------------------------------------------------------------------------------------
# tick tables


def sort_ticks(table: pa.Table) -> pa.Table:
    """Stable sort by ``ts_ns``: equal timestamps keep their relative order (the sources' sequence)."""
    order = np.argsort(table.column("ts_ns").to_numpy(), kind="stable")
    if np.all(order[1:] > order[:-1]):
        return table
    return table.take(order)


def validate_ticks(table: pa.Table, source: str | Path = "<table>") -> None:
    """Raise :class:`TickFileError` listing the first bad rows of ``table`` (schema must be canonical).

    Checks: timestamps present and plausible (2000-2100 UTC in ns, which catches seconds or milliseconds);
    symbol non-empty; kind ``trade`` or ``quote``; trades have a positive finite price and size and no quote
    fields; quotes have no trade fields, at least one side, and each side complete (price with size),
    prices positive finite, sizes finite and non-negative.
    """
    if table.schema != CANONICAL_SCHEMA:
        raise TickFileError(
            f"{source}: schema differs from the canonical tick schema:\n{table.schema}\nexpected:\n{CANONICAL_SCHEMA}"
        )
    if table.num_rows == 0:
        return
    col = {name: table.column(name) for name in CANONICAL_SCHEMA.names}
    present = {name: col[name].is_valid().to_numpy(zero_copy_only=False) for name in col}
    values = {name: col[name].to_numpy(zero_copy_only=False) for name in CANONICAL_SCHEMA.names[3:]}
    kind = col["kind"]
    is_trade = pc.equal(kind, TRADE).fill_null(False).to_numpy(zero_copy_only=False)
    is_quote = pc.equal(kind, QUOTE).fill_null(False).to_numpy(zero_copy_only=False)
    ts = col["ts_ns"].fill_null(0).to_numpy()
    with np.errstate(invalid="ignore"):
        positive = {name: present[name] & np.isfinite(values[name]) & (values[name] > 0) for name in values}
        non_negative = {name: present[name] & np.isfinite(values[name]) & (values[name] >= 0) for name in values}
    has_bid = present["bid"] | present["bid_size"]
    has_ask = present["ask"] | present["ask_size"]

    rules: list[tuple[np.ndarray, str, str]] = [
        (~present["ts_ns"], "ts_ns", "missing timestamp"),
        (
            present["ts_ns"] & ((ts < MIN_TS_NS) | (ts >= MAX_TS_NS)),
            "ts_ns",
            "not a plausible ns epoch (2000-2100 UTC): seconds or milliseconds instead of nanoseconds?",
        ),
        (
            ~present["symbol"] | (pc.utf8_length(col["symbol"]).fill_null(0).to_numpy() == 0),
            "symbol",
            "empty",
        ),
        (~(is_trade | is_quote), "kind", f"must be {TRADE!r} or {QUOTE!r}"),
        (is_trade & ~positive["price"], "price", "a trade needs a positive finite price (USD)"),
        (is_trade & ~positive["size"], "size", "a trade needs a positive finite size (shares)"),
        *(
            (is_trade & present[name], name, "must be empty on a trade row")
            for name in ("bid", "bid_size", "ask", "ask_size")
        ),
        *((is_quote & present[name], name, "must be empty on a quote row") for name in ("price", "size")),
        (is_quote & ~has_bid & ~has_ask, "bid", "a quote needs at least one side (bid or ask)"),
        *(
            (is_quote & side & ~positive[name], name, "a quoted side needs a positive finite price (USD)")
            for side, name in ((has_bid, "bid"), (has_ask, "ask"))
        ),
        *(
            (is_quote & side & ~non_negative[name], name, "a quoted side needs a finite size >= 0 (shares)")
            for side, name in ((has_bid, "bid_size"), (has_ask, "ask_size"))
        ),
    ]
    problems = row_problems(rules)
    if problems:
        raise bad_rows_error(source, table, problems)


def row_problems(rules: Iterable[tuple[np.ndarray, str, str]]) -> list[tuple[int, str, str]]:
    """``(row, column, message)`` for the first rows flagged by each ``(bad_mask, column, message)`` rule,
    in row order (rows 0-based here)."""
    return sorted(
        (int(row), column, message) for mask, column, message in rules for row in np.flatnonzero(mask)[:_MAX_REPORTED]
    )


def bad_rows_error(source: str | Path, table: pa.Table, problems: Sequence[tuple[int, str, str]]) -> TickFileError:
    """A :class:`TickFileError` listing the first ``problems`` with the offending values of ``table``."""
    lines = [
        f"  row {row + 1}, column {column!r} = {table.column(column)[row].as_py()!r}: {message}"
        for row, column, message in problems[:_MAX_REPORTED]
    ]
    more = f"\n  ... and more (first {_MAX_REPORTED} shown)" if len(problems) > _MAX_REPORTED else ""
    return TickFileError(f"{source}: invalid tick rows (rows 1-based, header not counted):\n" + "\n".join(lines) + more)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix
    raise TickFileError(f"{path}: unknown tick file type (expected .csv, .csv.gz or .parquet)")


def read_ticks(path: str | Path) -> pa.Table:
    """Read a canonical tick file (.csv, .csv.gz or .parquet), validate it and sort it stably by ``ts_ns``."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise TickFileError(f"{path}: no such file")
    table = _read_parquet(path) if suffix == ".parquet" else _read_csv(path)
    validate_ticks(table, path)
    return sort_ticks(table)


def write_ticks(table: pa.Table, path: str | Path) -> None:
    """Validate ``table``, write it in canonical (stable ``ts_ns``) order; the suffix picks the format."""
    path = Path(path)
    suffix = _suffix(path)
    validate_ticks(table, "table to write to " + str(path))
    table = sort_ticks(table)
    if suffix == ".parquet":
        pq.write_table(table, path)
        return
    options = pa_csv.WriteOptions(quoting_style="needed")
    if suffix == ".csv.gz":
        with pa.CompressedOutputStream(str(path), "gzip") as sink:
            pa_csv.write_csv(table, sink, options)
    else:
        pa_csv.write_csv(table, path, options)


def _check_columns(path: Path, names: Sequence[str]) -> None:
    expected = CANONICAL_SCHEMA.names
    missing = [n for n in expected if n not in names]
    unknown = [n for n in names if n not in expected]
    if missing or unknown:
        raise TickFileError(
            f"{path}: columns {list(names)} are not the canonical tick columns {expected} "
            f"(missing {missing}, unknown {unknown})"
        )


def _read_parquet(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TickFileError(f"{path}: not a readable Parquet file: {err}") from err
    _check_columns(path, table.schema.names)
    table = table.select(CANONICAL_SCHEMA.names)
    try:
        return table.cast(CANONICAL_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise TickFileError(f"{path}: column types cannot be cast to the canonical schema: {err}") from err


def _read_csv(path: Path) -> pa.Table:
    table = read_csv_columns(path, {f.name: f.type for f in CANONICAL_SCHEMA})
    _check_columns(path, table.schema.names)
    return table.select(CANONICAL_SCHEMA.names).cast(CANONICAL_SCHEMA)


def read_csv_columns(
    source: Path | bytes,
    column_types: Mapping[str, pa.DataType],
    *,
    name: str | None = None,
    column_names: Sequence[str] | None = None,
) -> pa.Table:
    """Read a CSV (a path, gzip by the ``.gz`` suffix, or the raw bytes of one) with typed columns.

    Building block for the importers. ``column_names`` is for headerless files; otherwise the header must
    hold every column of ``column_types`` (others are read as pyarrow infers them). Empty numeric fields
    become nulls, empty strings stay ``""``. Where pyarrow cannot convert a value it names the column but not
    the row: the file is then read again as text to name the first bad rows in a :class:`TickFileError`.
    """
    label = name or str(source)
    if column_names is None:
        header = _csv_header(source, label)
        missing = [c for c in column_types if c not in header]
        if missing:
            raise TickFileError(f"{label}: missing columns {missing}; the header is {header}")
    read = pa_csv.ReadOptions(column_names=list(column_names) if column_names is not None else None)
    try:
        return pa_csv.read_csv(
            _csv_input(source),
            read_options=read,
            convert_options=pa_csv.ConvertOptions(column_types=dict(column_types), strings_can_be_null=False),
        )
    except pa.ArrowInvalid as err:
        raise _csv_conversion_error(source, label, read, column_types, err) from err


def _csv_input(source: Path | bytes) -> Path | pa.BufferReader:
    return pa.BufferReader(source) if isinstance(source, bytes) else source


def _csv_header(source: Path | bytes, label: str) -> list[str]:
    try:
        if isinstance(source, bytes):
            first = source.split(b"\n", 1)[0].decode("utf-8")
        else:
            opener = gzip.open if source.name.lower().endswith(".gz") else open
            with opener(source, "rt", encoding="utf-8", newline="") as fh:
                first = fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise TickFileError(f"{label}: cannot read the header line: {err}") from err
    return [c.strip() for c in next(csv.reader([first]), [])]


_PATTERN_BY_TYPE = {
    "int": r"^\s*[+-]?[0-9]+\s*$",
    "float": r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$|^\s*[+-]?(?i:inf|infinity|nan)\s*$",
    "timestamp": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$",
}


def _value_pattern(data_type: pa.DataType) -> tuple[str, str] | None:
    """(regex a text value must match, description) for a typed CSV column; None for text columns."""
    if pa.types.is_integer(data_type):
        return _PATTERN_BY_TYPE["int"], "not an integer"
    if pa.types.is_floating(data_type):
        return _PATTERN_BY_TYPE["float"], "not a number"
    if pa.types.is_timestamp(data_type):
        return _PATTERN_BY_TYPE["timestamp"], "not an ISO 8601 timestamp with a zone offset"
    return None


def _csv_conversion_error(
    source: Path | bytes,
    label: str,
    read: pa_csv.ReadOptions,
    column_types: Mapping[str, pa.DataType],
    err: pa.ArrowInvalid,
) -> TickFileError:
    as_text = pa_csv.read_csv(
        _csv_input(source),
        read_options=read,
        convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in column_types}),
    )
    rules = []
    for column, data_type in column_types.items():
        expected = _value_pattern(data_type)
        if expected is None:
            continue
        text = as_text.column(column)
        bad = pc.and_(pc.invert(pc.match_substring_regex(text, expected[0])), pc.not_equal(text, ""))
        rules.append((bad.fill_null(False).to_numpy(zero_copy_only=False), column, expected[1]))
    problems = row_problems(rules)
    if not problems:  # e.g. an integer overflow: pyarrow's own message is the best we have
        return TickFileError(f"{label}: {err}")
    return bad_rows_error(label, as_text, problems)


# ---------------------------------------------------------------------------------------------------------
# reference data


def read_reference(path: str | Path) -> list[ReferenceRow]:
    """Read a reference CSV (``symbol,date,prev_close,tier``; .csv or .csv.gz) into typed rows, file order.

    Raises :class:`TickFileError` on a wrong header, an unparsable or out-of-range value (naming file, row,
    column and value) or a duplicate ``(symbol, date)``.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows: list[ReferenceRow] = []
    seen: dict[tuple[str, dt.date], int] = {}
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != REFERENCE_COLUMNS:
                raise TickFileError(f"{path}: header {header} is not {','.join(REFERENCE_COLUMNS)}")
            for number, fields in enumerate(reader, start=1):
                if not fields:
                    continue
                row = _parse_reference_row(path, number, fields)
                key = (row.symbol, row.date)
                if key in seen:
                    raise TickFileError(
                        f"{path}: row {number}: duplicate reference for {row.symbol} on {row.date} "
                        f"(first at row {seen[key]})"
                    )
                seen[key] = number
                rows.append(row)
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise TickFileError(f"{path}: cannot read: {err}") from err
    return rows


def _parse_reference_row(path: Path, number: int, fields: Sequence[str]) -> ReferenceRow:
    if len(fields) != len(REFERENCE_COLUMNS):
        raise TickFileError(f"{path}: row {number}: {len(fields)} fields {list(fields)}, expected 4")
    symbol, date_text, close_text, tier_text = (f.strip() for f in fields)

    def bad(column: str, value: str, why: str) -> TickFileError:
        return TickFileError(f"{path}: row {number}, column {column!r} = {value!r}: {why}")

    if not symbol:
        raise bad("symbol", symbol, "empty")
    try:
        date = dt.date.fromisoformat(date_text)
    except ValueError as err:
        raise bad("date", date_text, "not an ISO date YYYY-MM-DD") from err
    try:
        prev_close = float(close_text)
    except ValueError as err:
        raise bad("prev_close", close_text, "not a number") from err
    if not (math.isfinite(prev_close) and prev_close > 0):
        raise bad("prev_close", close_text, "must be a positive finite price in USD")
    if tier_text not in {str(t) for t in LULD_TIERS}:
        raise bad("tier", tier_text, f"LULD tier must be one of {LULD_TIERS}")
    return ReferenceRow(symbol=symbol, date=date, prev_close=prev_close, tier=int(tier_text))


def write_reference(rows: Iterable[ReferenceRow], path: str | Path) -> None:
    """Write reference rows as CSV (``symbol,date,prev_close,tier``; gzip when the name ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(REFERENCE_COLUMNS)
        for row in rows:
            writer.writerow((row.symbol, row.date.isoformat(), repr(row.prev_close), row.tier))
