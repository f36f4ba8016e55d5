"""Reference-data CSV: the prior close and LULD tier of each symbol for each trading date.

Reference data (CSV ``symbol,date,prev_close,tier``): for trading date ``date`` (ISO ``YYYY-MM-DD``, the
US/Eastern trading day it applies to), ``prev_close`` is the symbol's prior-session closing price in USD (the
SEC Rule 201 trigger base and the LULD price bucket) and ``tier`` its LULD tier (1 or 2).

Bad input raises :class:`~schemas.errors.TickFileError` naming the file, the data row, the column and the value.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import TickFileError

REFERENCE_COLUMNS = ("symbol", "date", "prev_close", "tier")
LULD_TIERS = (1, 2)


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """Reference data of one symbol for one trading date (see the module docstring for the meaning)."""

    symbol: str
    date: dt.date
    prev_close: float  # USD
    tier: int  # LULD tier, 1 or 2


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
