"""Canonical tick and reference files: round trips, ordering, and errors that name file, row, column, value."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from schemas.canonical import CANONICAL_SCHEMA, read_ticks, sort_ticks, write_ticks
from schemas.errors import TickFileError
from schemas.reference import ReferenceRow, read_reference, write_reference
from schemas.session import new_york_ns, session_mask

T0 = 1_514_903_400_000_000_000  # 2018-01-02 09:30:00 New York


def sample_ticks() -> pa.Table:
    """Trades and quotes (one one-sided), deliberately out of time order with ties."""
    rows = [
        dict(ts_ns=T0 + 5, symbol="XXX", kind="trade", price=158.3, size=100.0),
        dict(ts_ns=T0 + 1, symbol="XXX", kind="quote", bid=158.29, bid_size=300.0, ask=158.31, ask_size=200.0),
        dict(ts_ns=T0 + 5, symbol="YYY", kind="quote", bid=None, bid_size=None, ask=12.5, ask_size=0.0),
        dict(ts_ns=T0 + 1, symbol="YYY", kind="trade", price=12.49, size=0.5),
    ]
    return pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip_sorts_stably(tmp_path, suffix):
    path = tmp_path / f"ticks{suffix}"
    write_ticks(sample_ticks(), path)
    back = read_ticks(path)
    assert back.schema == CANONICAL_SCHEMA
    # stable by ts_ns: the two rows at T0+1 and the two at T0+5 keep their original relative order
    assert back.to_pylist() == sample_ticks().take([1, 3, 0, 2]).to_pylist()


def test_sort_is_stable_for_many_ties():
    n = 1000
    ts = np.repeat(np.arange(10, dtype=np.int64)[::-1], n // 10) + T0
    table = pa.table({"ts_ns": ts, "seq": np.arange(n)})
    out = sort_ticks(table)
    assert np.all(np.diff(out["ts_ns"].to_numpy()) >= 0)
    seq = out["seq"].to_numpy().reshape(10, -1)
    assert np.all(np.diff(seq, axis=1) > 0)


def write_text(path, body: str) -> None:
    path.write_text("ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n" + body)


@pytest.mark.parametrize(
    ("row", "column", "value"),
    [
        (f"{T0},XXX,trade,-1.5,100,,,,", "price", "-1.5"),
        (f"{T0},XXX,trade,abc,100,,,,", "price", "'abc'"),
        (f"{T0},XXX,trade,1.5,100,1.4,100,,", "bid", "1.4"),
        (f"{T0},XXX,quote,,,,,,", "bid", "None"),
        (f"{T0},XXX,quote,,,1.4,,1.5,100", "bid_size", "None"),
        (f"{T0},XXX,fill,1.5,100,,,,", "kind", "'fill'"),
        (f"{T0 // 1_000_000},XXX,trade,1.5,100,,,,", "ts_ns", str(T0 // 1_000_000)),
    ],
)
def test_bad_rows_are_named(tmp_path, row, column, value):
    path = tmp_path / "bad.csv"
    write_text(path, f"{T0},XXX,trade,1.5,100,,,,\n{row}\n")
    with pytest.raises(TickFileError) as err:
        read_ticks(path)
    message = str(err.value)
    assert str(path) in message and "row 2" in message and repr(column) in message and value in message


def test_wrong_columns_and_suffix(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text("ts,symbol,kind\n1,X,trade\n")
    with pytest.raises(TickFileError, match="missing"):
        read_ticks(path)
    with pytest.raises(TickFileError, match="unknown tick file type"):
        read_ticks(tmp_path / "ticks.json")


def test_reference_round_trip_and_errors(tmp_path):
    rows = [ReferenceRow("XXX", dt.date(2018, 1, 3), 157.02, 1), ReferenceRow("YYY", dt.date(2018, 1, 3), 2.5, 2)]
    path = tmp_path / "ref.csv"
    write_reference(rows, path)
    assert read_reference(path) == rows

    path.write_text("symbol,date,prev_close,tier\nXXX,2018-01-03,157.02,3\n")
    with pytest.raises(TickFileError, match=r"row 1, column 'tier' = '3'"):
        read_reference(path)
    path.write_text("symbol,date,prev_close,tier\nXXX,2018-01-03,157.02,1\nXXX,2018-01-03,150,1\n")
    with pytest.raises(TickFileError, match="duplicate reference for XXX"):
        read_reference(path)


def test_session_mask_follows_daylight_saving():
    # 2018-03-12 is the first weekday on EDT (UTC-4): the session opens at 13:30 UTC instead of 14:30.
    open_edt = new_york_ns(dt.date(2018, 3, 12), dt.time(9, 30))
    assert open_edt == int(np.datetime64("2018-03-12T13:30", "ns").astype(np.int64))
    ts = np.array([open_edt - 1, open_edt, open_edt + int(6.5 * 3600e9) - 1, open_edt + int(6.5 * 3600e9), T0])
    assert session_mask(ts).tolist() == [False, True, True, False, True]
