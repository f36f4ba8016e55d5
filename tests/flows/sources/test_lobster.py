"""LOBSTER importer on the real sample and on small constructed files."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import numpy as np
import pyarrow.compute as pc
import pytest

from flows.sources.lobster import lobster_event_counts, read_lobster
from schemas.canonical import CANONICAL_SCHEMA, validate_ticks
from schemas.errors import TickFileError
from schemas.session import new_york_ns

SAMPLE = "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip"
STEM = "AAPL_2012-06-21_34200000_57600000"


@pytest.fixture(scope="module")
def sample(shared_data):
    return read_lobster(shared_data / SAMPLE)


@pytest.mark.shared_data
def test_real_sample(sample):
    validate_ticks(sample)
    assert sample.schema == CANONICAL_SCHEMA
    trades = sample.filter(pc.equal(sample["kind"], "trade"))
    quotes = sample.filter(pc.equal(sample["kind"], "quote"))
    assert trades.num_rows == 34_990  # docs/reference.md: event types 4 and 5
    assert set(sample["symbol"].to_pylist()) == {"AAPL"}
    bid, ask = quotes["bid"].to_numpy(zero_copy_only=False), quotes["ask"].to_numpy(zero_copy_only=False)
    assert np.all(bid < ask)  # the sample's book never crosses nor locks
    day = dt.date(2012, 6, 21)
    ts = sample["ts_ns"].to_numpy()
    assert new_york_ns(day, dt.time(9, 30)) <= ts[0] and ts[-1] < new_york_ns(day, dt.time(16))
    assert np.all(np.diff(ts) >= 0)


@pytest.mark.shared_data
def test_visible_executions_fill_at_the_prevailing_quote(shared_data, sample):
    """The documented aggressor rule: direction -1 (resting sell) trades at the prior ask = a buy."""
    with zipfile.ZipFile(shared_data / SAMPLE) as archive:
        message = np.loadtxt(io.BytesIO(archive.read(f"{STEM}_message_1.csv")), delimiter=",")
    executions = message[np.isin(message[:, 1], (4, 5))]
    kind = np.array(sample["kind"].to_pylist())
    last_quote = np.maximum.accumulate(np.where(kind == "quote", np.arange(kind.size), 0))
    is_trade = kind == "trade"
    prior = last_quote[np.flatnonzero(is_trade) - 1]
    price = sample["price"].to_numpy(zero_copy_only=False)[is_trade]
    bid = sample["bid"].to_numpy(zero_copy_only=False)[prior]
    ask = sample["ask"].to_numpy(zero_copy_only=False)[prior]
    visible = executions[:, 1] == 4
    buyer_initiated = executions[:, 5] == -1
    assert np.array_equal(price, executions[:, 4] / 10_000)
    assert np.all(price[visible & buyer_initiated] == ask[visible & buyer_initiated])
    assert np.all(price[visible & ~buyer_initiated] == bid[visible & ~buyer_initiated])


def write_day(folder, name: str, messages: str, book: str):
    (folder / f"{name}_message_1.csv").write_text(messages)
    (folder / f"{name}_orderbook_1.csv").write_text(book)
    return folder / f"{name}_message_1.csv"


def test_two_files_dummy_prices_and_quote_changes(tmp_path):
    path = write_day(
        tmp_path,
        "XYZ_2012-06-21_34200000_57600000",
        "34200.000000001,1,1,100,101000,-1\n"
        "34200.5,1,2,50,100000,1\n"
        "34200.5,3,3,10,99000,1\n"  # deep in the book: level 1 unchanged, no quote row
        "34201.25,4,1,40,101000,-1\n",
        "101000,100,-9999999999,0\n"  # no bid yet: the dummy becomes an empty side
        "101000,100,100000,50\n"
        "101000,100,100000,50\n"
        "101000,60,100000,50\n",
    )
    table = read_lobster(path)
    validate_ticks(table)
    assert table["kind"].to_pylist() == ["quote", "quote", "trade", "quote"]
    assert table["bid"].to_pylist()[0] is None and table["ask"].to_pylist()[0] == 10.1
    midnight = new_york_ns(dt.date(2012, 6, 21), dt.time(0))
    assert table["ts_ns"].to_pylist()[0] == midnight + 34_200_000_000_001
    assert table["price"].to_pylist()[2] == 10.1 and table["size"].to_pylist()[2] == 40
    assert lobster_event_counts(path) == {1: 2, 3: 1, 4: 1}


def test_renamed_files_need_symbol_and_date(tmp_path):
    path = write_day(tmp_path, "day", "34200.1,1,1,100,101000,-1\n", "101000,100,100000,50\n")
    with pytest.raises(TickFileError, match="pass symbol= and date="):
        read_lobster(path)
    table = read_lobster(path, symbol="XYZ", date=dt.date(2012, 6, 21))
    assert table["symbol"].to_pylist() == ["XYZ"]


def test_bad_rows_are_named(tmp_path):
    path = write_day(
        tmp_path,
        "XYZ_2012-06-21_34200000_57600000",
        "34200.1,1,1,100,101000,-1\n34200.2,4,1,100,101000,0\n",
        "101000,100,100000,50\n101000,0,100000,50\n",
    )
    with pytest.raises(TickFileError, match=r"message_1\.csv.*\n  row 2, column 'direction' = 0"):
        read_lobster(path)
    (tmp_path / "XYZ_2012-06-21_34200000_57600000_orderbook_1.csv").write_text("101000,100,100000,50\n")
    with pytest.raises(TickFileError, match="row-aligned"):
        read_lobster(path)
