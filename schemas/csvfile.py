"""CSV reading for the importers: typed columns, and errors that name the file, row, column and value.

pyarrow names the column of a value it cannot convert but not the row; these helpers read the file again as text
to find the first bad rows (:class:`~schemas.errors.TickFileError`).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from schemas.errors import TickFileError

#: How many problems one error message lists (the first ones in file order).
_MAX_REPORTED = 5


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
