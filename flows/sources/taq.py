"""NYSE TAQ trades and per-venue quotes (CSV or gzip CSV) -> canonical tick table.

Input layout (``docs/reference.md``, "The real samples": the R package ``highfrequency``'s raw samples):

- trades ``DT, EX, SYMBOL, COND, SIZE, PRICE, CORR``;
- quotes ``DT, EX, BID, BIDSIZ, OFR, OFRSIZ, SYMBOL``;
- ``DT`` ISO 8601 with a zone offset (``2018-01-02T09:30:00.123-05:00``), converted to int64 ns UTC; a value
  without an offset is rejected rather than guessed; symbols are kept as the file spells them.

Trades
    Rows with ``CORR != 0`` (corrected, cancelled or erroneous prints) are dropped. Sale conditions: ``COND``
    holds up to four one-character codes (spaces are padding). A print is kept when every code is in
    ``eligible_conditions``. The default, :data:`REGULAR_SALE_CONDITIONS` = ``{@, E, F, I}`` (regular sale,
    automatic execution, intermarket sweep, odd lot), is the cleaning rule of Barndorff-Nielsen, Hansen, Lunde
    and Shephard (2009, "Realized kernels in practice", Econometrics Journal 12, rule T3) as implemented by
    R ``highfrequency::tradesCondition`` (default ``validConds``). It drops prints whose price is not a
    current, regular-way price: ``T``/``U`` extended hours, ``Z`` out of sequence, ``4`` derivatively
    priced, ``B``/``W`` average price, ``C`` cash, ``N`` next day, ``R`` seller's option, ``7``/``V``
    contingent, ``O``/``Q``/``M``/``6`` auction and official open/close reports, ``P`` prior reference.
    Odd lots (``I``) are kept: since 2013 they are on the consolidated tape, and here they are about half of
    all prints. Pass ``eligible_conditions=None`` to keep every uncancelled print (the tape's volume: this is
    how the sanity figures in docs/reference.md are computed), or another set to be stricter. The canonical format
    has no condition column, so the choice is made here, once, for every downstream feature.

Quotes -> NBBO
    Each venue's latest quote stands until that venue quotes again. A zero, negative-free empty or absent
    ``BID``/``OFR`` means that venue has no quote on that side. NBBO bid = max over venues of their latest
    bids, NBBO offer = min over their latest offers. NBBO size = the summed displayed size of all venues at
    the best price (aggregate depth at the inside; the SIP instead reports one venue's size), converted from
    round lots to shares (x 100). The NBBO is evaluated once per ``(symbol, DT)`` after all updates sharing
    the timestamp (the order of venues inside one millisecond carries no information) and a quote row is
    emitted whenever it differs from the previous one. A side absent on every venue is left empty; an NBBO
    with neither side (no venue quoting at all) has no canonical form and emits nothing until a side
    returns. Crossed or locked NBBOs are kept (the estimators filter them).

Regular-session filtering is left to the consumer (:func:`schemas.session.session_mask` for batch use).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.canonical import CANONICAL_SCHEMA, QUOTE, TRADE, sort_ticks
from schemas.csvfile import bad_rows_error, read_csv_columns, row_problems

#: Sale-condition codes whose prints carry a regular-way current price (BNHLS 2009 rule T3; see module doc).
REGULAR_SALE_CONDITIONS = frozenset({"@", "E", "F", "I"})
#: TAQ quote sizes are in round lots of 100 shares.
ROUND_LOT_SHARES = 100

_TS = pa.timestamp("ns", tz="UTC")
TRADE_COLUMNS = {
    "DT": _TS,
    "SYMBOL": pa.string(),
    "COND": pa.string(),
    "SIZE": pa.float64(),
    "PRICE": pa.float64(),
    "CORR": pa.int64(),
}
QUOTE_COLUMNS = {
    "DT": _TS,
    "EX": pa.string(),
    "BID": pa.float64(),
    "BIDSIZ": pa.float64(),
    "OFR": pa.float64(),
    "OFRSIZ": pa.float64(),
    "SYMBOL": pa.string(),
}


def read_taq(
    trades_path: str | Path,
    quotes_path: str | Path | None = None,
    *,
    eligible_conditions: frozenset[str] | None = REGULAR_SALE_CONDITIONS,
    quote_venues: frozenset[str] | None = None,
) -> pa.Table:
    """Trades (and, if given, the NBBO built from the quotes) as one canonical table, stable by ``ts_ns``.

    At equal timestamps trades come before quotes: a quote stamped in the same millisecond as a trade is
    usually its consequence, so each trade meets the quote that prevailed before it.
    """
    parts = [read_taq_trades(trades_path, eligible_conditions=eligible_conditions)]
    if quotes_path is not None:
        parts.append(read_taq_quotes(quotes_path, venues=quote_venues))
    return sort_ticks(pa.concat_tables(parts))


def read_taq_trades(
    path: str | Path, *, eligible_conditions: frozenset[str] | None = REGULAR_SALE_CONDITIONS
) -> pa.Table:
    """TAQ trades CSV(.gz) -> canonical trade rows (file order): uncancelled, condition-eligible prints."""
    path = Path(path)
    raw = read_csv_columns(path, TRADE_COLUMNS)
    corr = raw.column("CORR")
    price = raw.column("PRICE").to_numpy(zero_copy_only=False)
    size = raw.column("SIZE").to_numpy(zero_copy_only=False)
    kept = corr.fill_null(0).to_numpy(zero_copy_only=False) == 0
    with np.errstate(invalid="ignore"):
        problems = row_problems(
            [
                (~corr.is_valid().to_numpy(zero_copy_only=False), "CORR", "missing correction indicator"),
                (
                    kept & ~raw.column("DT").is_valid().to_numpy(zero_copy_only=False),
                    "DT",
                    "missing timestamp",
                ),
                (kept & _empty(raw.column("SYMBOL")), "SYMBOL", "empty symbol"),
                (kept & ~(np.isfinite(price) & (price > 0)), "PRICE", "not a positive price (USD)"),
                (kept & ~(np.isfinite(size) & (size > 0)), "SIZE", "not a positive size (shares)"),
            ]
        )
    if problems:
        raise bad_rows_error(path, raw, problems)
    if eligible_conditions is not None:
        kept &= conditions_eligible(raw.column("COND"), eligible_conditions)
    trades = raw.filter(pa.array(kept))
    n = trades.num_rows
    return pa.table(
        {
            "ts_ns": trades.column("DT").cast(pa.int64()),
            "symbol": trades.column("SYMBOL"),
            "kind": pa.array(np.full(n, TRADE, dtype=object), pa.string()),
            "price": trades.column("PRICE"),
            "size": trades.column("SIZE"),
            **{name: pa.nulls(n, pa.float64()) for name in ("bid", "bid_size", "ask", "ask_size")},
        },
        schema=CANONICAL_SCHEMA,
    )


def conditions_eligible(cond: pa.ChunkedArray, eligible: frozenset[str]) -> np.ndarray:
    """Per row: True when every code of the TAQ ``COND`` string (spaces ignored) is in ``eligible``.

    A blank condition is a regular sale and always eligible. Evaluated once per distinct string.
    """
    codes, distinct = _dictionary_codes(cond)
    verdict = np.array([set(text.replace(" ", "")) <= eligible for text in distinct], dtype=bool)
    return verdict[codes]


def _dictionary_codes(strings: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(per-row integer code, distinct values) of a string column."""
    encoded = pc.dictionary_encode(strings.combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _empty(strings: pa.ChunkedArray) -> np.ndarray:
    return pc.utf8_length(pc.utf8_trim_whitespace(strings)).fill_null(0).to_numpy(zero_copy_only=False) == 0


def read_taq_quotes(path: str | Path, *, venues: frozenset[str] | None = None) -> pa.Table:
    """TAQ per-venue quotes CSV(.gz) -> canonical NBBO quote rows (see the module doc for the rules).

    ``venues``: build the best bid and offer from these ``EX`` codes only (None: all venues). A sample whose
    secondary venues are thinned, like the highfrequency sample in ``shared/data`` (NYSE has 94k of its 131k
    quotes), leaves stale venue quotes standing and so crosses its NBBO often (about 40% of updates there);
    ``venues=frozenset({"N"})`` gives the primary listing market's quote instead, as R highfrequency's
    ``autoSelectExchangeQuotes`` does.
    """
    path = Path(path)
    raw = read_csv_columns(path, QUOTE_COLUMNS)
    ts = raw.column("DT").cast(pa.int64())
    bid, bid_size, ask, ask_size = (
        raw.column(c).to_numpy(zero_copy_only=False) for c in ("BID", "BIDSIZ", "OFR", "OFRSIZ")
    )
    # Empty prices read as NaN: absent, like a zero price. Negative or infinite ones are errors.
    bid_quoted = np.nan_to_num(bid, nan=0.0) > 0
    ask_quoted = np.nan_to_num(ask, nan=0.0) > 0
    with np.errstate(invalid="ignore"):
        problems = row_problems(
            [
                (~ts.is_valid().to_numpy(zero_copy_only=False), "DT", "missing timestamp"),
                (_empty(raw.column("SYMBOL")), "SYMBOL", "empty symbol"),
                (_empty(raw.column("EX")), "EX", "empty venue code"),
                (
                    ~np.isnan(bid) & ~(np.isfinite(bid) & (bid >= 0)),
                    "BID",
                    "not a price >= 0 (USD, 0 = none)",
                ),
                (
                    ~np.isnan(ask) & ~(np.isfinite(ask) & (ask >= 0)),
                    "OFR",
                    "not a price >= 0 (USD, 0 = none)",
                ),
                (bid_quoted & ~(bid_size >= 0), "BIDSIZ", "a quoted bid needs a size >= 0 (round lots)"),
                (ask_quoted & ~(ask_size >= 0), "OFRSIZ", "a quoted offer needs a size >= 0 (round lots)"),
            ]
        )
    if problems:
        raise bad_rows_error(path, raw, problems)

    symbol_code, symbols = _dictionary_codes(raw.column("SYMBOL"))
    venue_code, _ = _dictionary_codes(raw.column("EX"))
    ts_ns = ts.to_numpy()
    order = np.lexsort((ts_ns, symbol_code))  # stable: equal (symbol, DT) keep file order
    if venues is not None:
        selected = pc.is_in(raw.column("EX"), pa.array(sorted(venues), pa.string())).to_numpy(zero_copy_only=False)
        order = order[selected[order]]
    bounds = np.flatnonzero(np.diff(symbol_code[order])) + 1
    shares = ROUND_LOT_SHARES
    parts = []
    for rows in np.split(order, bounds):
        if rows.size == 0:
            continue
        nbbo = nbbo_from_venue_quotes(
            ts_ns[rows],
            venue_code[rows],
            np.where(bid_quoted[rows], bid[rows], np.nan),
            np.where(bid_quoted[rows], bid_size[rows] * shares, np.nan),
            np.where(ask_quoted[rows], ask[rows], np.nan),
            np.where(ask_quoted[rows], ask_size[rows] * shares, np.nan),
        )
        parts.append(_quote_rows(symbols[symbol_code[rows[0]]], *nbbo))
    if not parts:
        return CANONICAL_SCHEMA.empty_table()
    return sort_ticks(pa.concat_tables(parts))


def nbbo_from_venue_quotes(
    ts_ns: np.ndarray,
    venue: np.ndarray,
    bid: np.ndarray,
    bid_size: np.ndarray,
    ask: np.ndarray,
    ask_size: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """NBBO changes of one symbol from its venue quotes (sorted by time; NaN = no quote on that side).

    ``venue`` holds small integer codes. Returns ``(ts_ns, bid, bid_size, ask, ask_size)`` of the rows where
    the NBBO, evaluated after the last update of each timestamp, differs from the previous emitted one; an
    absent side is NaN. Vectorised: the latest quote of every venue is carried forward with a running
    maximum of row indices, so memory is O(rows x venues).
    """
    n = ts_ns.size
    venue_ids = np.unique(venue)
    rows = np.arange(n)
    # [n, V]: index of each venue's latest row at or before each row (-1 before the venue's first quote).
    latest = np.maximum.accumulate(np.where(venue[:, None] == venue_ids[None, :], rows[:, None], -1), axis=0)
    seen = latest >= 0
    latest_bid = np.where(seen, bid[latest], np.nan)  # [n, V]
    latest_ask = np.where(seen, ask[latest], np.nan)
    best_bid = np.fmax.reduce(latest_bid, axis=1)  # NaN only where no venue bids
    best_ask = np.fmin.reduce(latest_ask, axis=1)
    best_bid_size = np.where(latest_bid == best_bid[:, None], bid_size[latest], 0.0).sum(axis=1)
    best_ask_size = np.where(latest_ask == best_ask[:, None], ask_size[latest], 0.0).sum(axis=1)
    best_bid_size[np.isnan(best_bid)] = np.nan
    best_ask_size[np.isnan(best_ask)] = np.nan

    last_of_timestamp = np.append(ts_ns[1:] != ts_ns[:-1], True)
    state = np.column_stack([best_bid, best_bid_size, best_ask, best_ask_size])[last_of_timestamp]
    state_ts = ts_ns[last_of_timestamp]
    # NaN-aware change test: NaN == NaN counts as unchanged.
    same = (state[1:] == state[:-1]) | (np.isnan(state[1:]) & np.isnan(state[:-1]))
    changed = np.append(True, ~same.all(axis=1))
    quoted = ~(np.isnan(state[:, 0]) & np.isnan(state[:, 2]))
    emit = changed & quoted
    return (state_ts[emit], *(state[emit, k] for k in range(4)))


def _quote_rows(
    symbol: str,
    ts_ns: np.ndarray,
    bid: np.ndarray,
    bid_size: np.ndarray,
    ask: np.ndarray,
    ask_size: np.ndarray,
) -> pa.Table:
    n = ts_ns.size
    return pa.table(
        {
            "ts_ns": pa.array(ts_ns, pa.int64()),
            "symbol": pa.array(np.full(n, symbol, dtype=object), pa.string()),
            "kind": pa.array(np.full(n, QUOTE, dtype=object), pa.string()),
            "price": pa.nulls(n, pa.float64()),
            "size": pa.nulls(n, pa.float64()),
            **{
                name: pa.array(values, pa.float64(), from_pandas=True)
                for name, values in (
                    ("bid", bid),
                    ("bid_size", bid_size),
                    ("ask", ask),
                    ("ask_size", ask_size),
                )
            },
        },
        schema=CANONICAL_SCHEMA,
    )
