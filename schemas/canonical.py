"""Canonical tick table: the one file format for replay and simulation (reference data: schemas/reference.py).

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

Bad input raises :class:`TickFileError` naming the file, the data row (1-based, header not counted), the
column and the value, before anything downstream sees the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from schemas.csvfile import bad_rows_error, read_csv_columns, row_problems
from schemas.errors import TickFileError
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
