"""LOBSTER message + order-book files (a zip, or the two CSVs) -> canonical tick table.

Format (LOBSTER_SampleFiles_ReadMe.txt, shipped in the sample zip, version of 1 Sept 2013):

- file names ``TICKER_YYYY-MM-DD_STARTms_ENDms_message_LEVEL.csv`` and ``..._orderbook_LEVEL.csv``,
  row-aligned, no header;
- message columns: time (seconds after midnight, New York local time, up to ns decimals), event type
  (1 new limit order, 2 partial cancel, 3 delete, 4 visible execution, 5 hidden execution, 6 cross,
  7 trading halt), order id, size (shares), price (USD x 10,000), direction (+1 buy / -1 sell limit order);
- order-book columns per level: ask price, ask size, bid price, bid size (prices USD x 10,000); the state
  after the message on the same row. An empty side is filled with the dummy prices 9999999999 (ask) and
  -9999999999 (bid) and size 0: that side becomes empty (null) here.

Output (stable by ``ts_ns``; for each message its trade row, then the quote row it caused):

- a trade for each execution, event types 4 and 5 (hidden executions are real trades on the tape), at the
  message's price and size. The aggressor is the opposite side of the resting order: direction -1 (a sell
  limit order executed) is a buyer-initiated trade, +1 a seller-initiated one. The canonical table carries
  no side, and none is needed for visible executions: they fill at the best resting price, so the quote
  rule (trade at the ask = buy) on the preceding quote recovers the aggressor; hidden executions may fill
  inside the spread, where the quote rule can misclassify them.
- a quote for each message after which the level-1 book (best bid, its size, best ask, its size) differs
  from the previous row's; every message is kept in sequence (nanosecond stamps, ITCH order), unlike the
  TAQ NBBO which is collapsed per millisecond. Nasdaq's book only, not the NBBO.
- not represented: type 6 (cross/auction prints: the canonical format has no auction kind, and the sample
  holds none) and type 7 halts (the canonical table has no status rows): their count is reported by
  :func:`lobster_event_counts` so a caller can refuse files that contain them.

Timestamps: ``new_york_ns(date, 00:00) + round(seconds x 1e9)``; float64 seconds below 86,400 resolve
about 1e-11 s, so the rounding recovers the file's nanoseconds exactly.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.canonical import CANONICAL_SCHEMA, QUOTE, TRADE
from schemas.csvfile import bad_rows_error, read_csv_columns, row_problems
from schemas.errors import TickFileError
from schemas.session import new_york_ns

PRICE_SCALE = 10_000  # LOBSTER prices are USD x 10,000
DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
EXECUTION_TYPES = (4, 5)
_NAME = re.compile(
    r"^(?P<symbol>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_(?P<part>message|orderbook)_"
    r"(?P<level>\d+)\.csv$"
)
MESSAGE_COLUMNS = {
    "time": pa.float64(),
    "type": pa.int64(),
    "order_id": pa.int64(),
    "size": pa.int64(),
    "price": pa.int64(),
    "direction": pa.int64(),
}
BOOK_LEVEL_COLUMNS = ("ask", "ask_size", "bid", "bid_size")


@dataclass(frozen=True, slots=True)
class LobsterFiles:
    """The message and order-book CSV contents of one LOBSTER day, with the names used in errors."""

    message: bytes
    orderbook: bytes
    message_name: str
    orderbook_name: str


def read_lobster(path: str | Path, symbol: str | None = None, date: dt.date | None = None) -> pa.Table:
    """LOBSTER day -> canonical trades + level-1 quotes (see the module doc).

    ``path``: a zip holding one message/order-book pair, or the message CSV (its order-book file is found
    beside it by name). ``symbol`` and ``date`` (the New York trading date) default to those in the file
    name; pass them when the files were renamed.
    """
    files = _load(Path(path))
    parsed = _NAME.match(Path(files.message_name.split("!")[-1]).name)
    if symbol is None or date is None:
        if parsed is None:
            raise TickFileError(
                f"{files.message_name}: the name does not follow TICKER_YYYY-MM-DD_START_END_message_LEVEL.csv; "
                "pass symbol= and date= explicitly"
            )
        symbol = symbol or parsed["symbol"]
        date = date or dt.date.fromisoformat(parsed["date"])
    levels = int(parsed["level"]) if parsed else None
    message = read_csv_columns(
        files.message, MESSAGE_COLUMNS, name=files.message_name, column_names=list(MESSAGE_COLUMNS)
    )
    book = _read_book(files, levels)
    if book.num_rows != message.num_rows:
        raise TickFileError(
            f"{files.message_name} has {message.num_rows} rows but {files.orderbook_name} has {book.num_rows}: "
            "the two files must be row-aligned"
        )
    _validate(files, message, book)
    return _to_canonical(message, book, symbol, new_york_ns(date, dt.time(0)))


def lobster_event_counts(path: str | Path) -> dict[int, int]:
    """Number of messages per LOBSTER event type (1-7) in a day: e.g. to refuse days with halts (type 7)."""
    files = _load(Path(path))
    types = read_csv_columns(
        files.message, MESSAGE_COLUMNS, name=files.message_name, column_names=list(MESSAGE_COLUMNS)
    ).column("type")
    values, counts = np.unique(types.to_numpy(), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _load(path: Path) -> LobsterFiles:
    if not path.is_file():
        raise TickFileError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            messages = [n for n in names if _is_part(n, "message")]
            books = [n for n in names if _is_part(n, "orderbook")]
            if len(messages) != 1 or len(books) != 1:
                raise TickFileError(
                    f"{path}: expected one *_message_N.csv and one *_orderbook_N.csv, found {messages} and {books}"
                )
            return LobsterFiles(
                archive.read(messages[0]), archive.read(books[0]), f"{path}!{messages[0]}", f"{path}!{books[0]}"
            )
    book_path = path.with_name(path.name.replace("_message_", "_orderbook_"))
    if book_path == path or not book_path.is_file():
        raise TickFileError(f"{path}: no order-book file beside it (expected {book_path.name})")
    return LobsterFiles(path.read_bytes(), book_path.read_bytes(), str(path), str(book_path))


def _is_part(name: str, part: str) -> bool:
    parsed = _NAME.match(Path(name).name)
    return parsed is not None and parsed["part"] == part


def _read_book(files: LobsterFiles, levels: int | None) -> pa.Table:
    width = len(files.orderbook.split(b"\n", 1)[0].split(b","))
    if width % 4 or (levels is not None and width != 4 * levels):
        raise TickFileError(
            f"{files.orderbook_name}: {width} columns; a LOBSTER book has 4 per level"
            + (f" ({4 * levels} for level {levels})" if levels else "")
        )
    names = [*BOOK_LEVEL_COLUMNS, *(f"level{k}_{i}" for k in range(2, width // 4 + 1) for i in range(4))]
    return read_csv_columns(
        files.orderbook,
        {name: pa.int64() for name in BOOK_LEVEL_COLUMNS},
        name=files.orderbook_name,
        column_names=names,
    ).select(list(BOOK_LEVEL_COLUMNS))


def _validate(files: LobsterFiles, message: pa.Table, book: pa.Table) -> None:
    m = {name: message.column(name).to_numpy() for name in MESSAGE_COLUMNS}
    b = {name: book.column(name).to_numpy() for name in BOOK_LEVEL_COLUMNS}
    is_execution = np.isin(m["type"], EXECUTION_TYPES)
    message_problems = row_problems(
        [
            (~((m["time"] >= 0) & (m["time"] < 86_400)), "time", "not seconds after midnight in [0, 86400)"),
            (np.append(False, np.diff(m["time"]) < 0), "time", "earlier than the previous message"),
            (~np.isin(m["type"], np.arange(1, 8)), "type", "event type must be 1..7"),
            (is_execution & ~(m["price"] > 0), "price", "an execution needs a positive price (USD x 10,000)"),
            (is_execution & ~(m["size"] > 0), "size", "an execution needs a positive size (shares)"),
            (~np.isin(m["direction"], (-1, 1)), "direction", "must be +1 (buy) or -1 (sell)"),
        ]
    )
    if message_problems:
        raise bad_rows_error(files.message_name, message, message_problems)
    book_problems = row_problems(
        [
            (~((b["ask"] > 0) | (b["ask"] == DUMMY_ASK)), "ask", f"not a price > 0 or the dummy {DUMMY_ASK}"),
            (~((b["bid"] > 0) | (b["bid"] == DUMMY_BID)), "bid", f"not a price > 0 or the dummy {DUMMY_BID}"),
            (b["ask_size"] < 0, "ask_size", "negative size"),
            (b["bid_size"] < 0, "bid_size", "negative size"),
        ]
    )
    if book_problems:
        raise bad_rows_error(files.orderbook_name, book, book_problems)


def _to_canonical(message: pa.Table, book: pa.Table, symbol: str, midnight_ns: int) -> pa.Table:
    seconds = message.column("time").to_numpy()
    ts_ns = midnight_ns + np.rint(seconds * 1e9).astype(np.int64)

    is_trade = np.isin(message.column("type").to_numpy(), EXECUTION_TYPES)
    trade_price = message.column("price").to_numpy() / PRICE_SCALE
    trade_size = message.column("size").to_numpy().astype(np.float64)

    raw_bid, raw_ask = book.column("bid").to_numpy(), book.column("ask").to_numpy()
    bid = np.where(raw_bid == DUMMY_BID, np.nan, raw_bid / PRICE_SCALE)
    ask = np.where(raw_ask == DUMMY_ASK, np.nan, raw_ask / PRICE_SCALE)
    bid_size = np.where(np.isnan(bid), np.nan, book.column("bid_size").to_numpy().astype(np.float64))
    ask_size = np.where(np.isnan(ask), np.nan, book.column("ask_size").to_numpy().astype(np.float64))
    state = np.column_stack([bid, bid_size, ask, ask_size])
    same = (state[1:] == state[:-1]) | (np.isnan(state[1:]) & np.isnan(state[:-1]))
    is_quote = np.append(True, ~same.all(axis=1)) & ~(np.isnan(bid) & np.isnan(ask))

    # Row 2i is message i's trade, row 2i + 1 the quote after it: selecting keeps that interleaving.
    trade_rows, quote_rows = np.flatnonzero(is_trade), np.flatnonzero(is_quote)
    order = np.argsort(np.concatenate([2 * trade_rows, 2 * quote_rows + 1]), kind="stable")
    n_trades, n_quotes = trade_rows.size, quote_rows.size
    nan_trades, nan_quotes = np.full(n_trades, np.nan), np.full(n_quotes, np.nan)

    def column(trade_values: np.ndarray, quote_values: np.ndarray) -> np.ndarray:
        return np.concatenate([trade_values, quote_values])[order]

    return pa.table(
        {
            "ts_ns": column(ts_ns[trade_rows], ts_ns[quote_rows]),
            "symbol": pa.array(np.full(n_trades + n_quotes, symbol, dtype=object), pa.string()),
            "kind": pa.array(column(np.full(n_trades, TRADE, dtype=object), np.full(n_quotes, QUOTE, dtype=object))),
            "price": pa.array(column(trade_price[trade_rows], nan_quotes), from_pandas=True),
            "size": pa.array(column(trade_size[trade_rows], nan_quotes), from_pandas=True),
            **{
                name: pa.array(column(nan_trades, values[quote_rows]), from_pandas=True)
                for name, values in (("bid", bid), ("bid_size", bid_size), ("ask", ask), ("ask_size", ask_size))
            },
        },
        schema=CANONICAL_SCHEMA,
    )
