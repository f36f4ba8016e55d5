"""TAQ importer: the published sanity figures, the condition policy, and the NBBO against a plain loop."""

from __future__ import annotations

import csv
import gzip
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.sources.taq import REGULAR_SALE_CONDITIONS, read_taq, read_taq_quotes, read_taq_trades
from schemas.canonical import CANONICAL_SCHEMA, validate_ticks
from schemas.errors import TickFileError
from schemas.session import session_mask

TRADES = "taq_XXX_20180102-03_trades.csv.gz"
QUOTES = "taq_XXX_20180102-03_quotes.csv.gz"
NS_PER_DAY = 86_400 * 10**9


def regular_session_bars(trades: pa.Table) -> dict[str, tuple[float, float, float, float, float]]:
    """(open, high, low, last, volume) per New York date of the regular-session trades."""
    ts = trades["ts_ns"].to_numpy()
    inside = session_mask(ts)
    ts, price, size = ts[inside], trades["price"].to_numpy()[inside], trades["size"].to_numpy()[inside]
    out = {}
    for day in np.unique(ts // NS_PER_DAY):
        on = ts // NS_PER_DAY == day
        p = price[on]
        out[str(np.datetime64(int(day), "D"))] = (p[0], p.max(), p.min(), p[-1], size[on].sum())
    return out


@pytest.mark.shared_data
def test_sanity_figures_all_prints(shared_data):
    # docs/reference.md (the sample's notes), regular session 09:30-16:00 ET, every uncancelled print:
    # 2018-01-02 open 158.30, range 156.03-159.40, last 157.02, 4.32 M shares;
    # 2018-01-03 open 157.04, range 155.40-158.99, last 157.27, 3.62 M shares.
    bars = regular_session_bars(read_taq_trades(shared_data / TRADES, eligible_conditions=None))
    published = {
        "2018-01-02": (158.30, 159.40, 156.03, 157.02, 4.32e6),
        "2018-01-03": (157.04, 158.99, 155.40, 157.27, 3.62e6),
    }
    assert bars.keys() == published.keys()
    for day, (open_, high, low, last, volume) in published.items():
        got = bars[day]
        assert got[:4] == pytest.approx((open_, high, low, last), abs=0.005), day  # figures are rounded to cents
        assert got[4] == pytest.approx(volume, abs=0.005e6), day  # and to 10k shares


@pytest.mark.shared_data
def test_cancelled_and_ineligible_prints_are_dropped(shared_data):
    with gzip.open(shared_data / TRADES, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    uncancelled = [r for r in rows if r["CORR"] == "0"]
    regular = [r for r in uncancelled if set(r["COND"].replace(" ", "")) <= {"@", "E", "F", "I"}]
    assert len(uncancelled) < len(rows)  # the sample does contain cancelled prints

    every = read_taq_trades(shared_data / TRADES, eligible_conditions=None)
    default = read_taq_trades(shared_data / TRADES)
    assert every.num_rows == len(uncancelled)
    assert default.num_rows == len(regular) < len(uncancelled)
    assert default["price"].to_pylist() == [float(r["PRICE"]) for r in regular]
    assert REGULAR_SALE_CONDITIONS == {"@", "E", "F", "I"}  # highfrequency::tradesCondition validConds


def nbbo_by_loop(rows: list[dict]) -> list[tuple]:
    """Reference NBBO: per-venue latest quotes in a dict, evaluated at the end of each timestamp."""
    latest: dict[str, tuple[float, float, float, float]] = {}
    out: list[tuple] = []
    previous = None
    for i, row in enumerate(rows):
        bid, ask = float(row["BID"] or 0), float(row["OFR"] or 0)
        latest[row["EX"]] = (bid, float(row["BIDSIZ"] or 0) * 100, ask, float(row["OFRSIZ"] or 0) * 100)
        if i + 1 < len(rows) and rows[i + 1]["DT"] == row["DT"]:
            continue
        bids = [q for q in latest.values() if q[0] > 0]
        asks = [q for q in latest.values() if q[2] > 0]
        best_bid = max((q[0] for q in bids), default=math.nan)
        best_ask = min((q[2] for q in asks), default=math.nan)
        state = (
            best_bid,
            sum(q[1] for q in bids if q[0] == best_bid) if bids else math.nan,
            best_ask,
            sum(q[3] for q in asks if q[2] == best_ask) if asks else math.nan,
        )
        if state != previous and not (math.isnan(best_bid) and math.isnan(best_ask)):
            out.append(state)
        previous = state
    return out


def as_states(table: pa.Table) -> list[tuple]:
    cols = [table[c].to_numpy(zero_copy_only=False) for c in ("bid", "bid_size", "ask", "ask_size")]
    return [tuple(float(c[i]) for c in cols) for i in range(table.num_rows)]


def same_states(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))


@pytest.mark.shared_data
def test_nbbo_matches_a_plain_loop_on_the_real_sample(shared_data, tmp_path):
    with gzip.open(shared_data / QUOTES, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = [row for _, row in zip(range(20_000), reader, strict=False)]
    path = tmp_path / "quotes.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    nbbo = read_taq_quotes(path)
    assert nbbo.num_rows > 1000
    assert same_states(as_states(nbbo), nbbo_by_loop(rows))


def test_nbbo_rules_on_a_constructed_book(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(
        "DT,EX,BID,BIDSIZ,OFR,OFRSIZ,SYMBOL\n"
        "2018-01-02T09:30:00.000-05:00,N,10.00,2,10.05,1,XXX\n"
        "2018-01-02T09:30:00.001-05:00,P,10.00,3,10.04,1,XXX\n"  # bid size aggregates, offer improves
        "2018-01-02T09:30:00.002-05:00,N,0,0,10.05,1,XXX\n"  # N withdraws its bid: P's bid alone
        "2018-01-02T09:30:00.003-05:00,P,0,0,10.06,1,XXX\n"  # nobody bids: one-sided NBBO
        "2018-01-02T09:30:00.003-05:00,P,,,10.04,1,XXX\n"  # same ms: only the final state counts
        "2018-01-02T09:30:00.004-05:00,Z,10.01,1,10.03,4,XXX\n"
    )
    nbbo = read_taq_quotes(path)
    validate_ticks(nbbo)
    assert same_states(
        as_states(nbbo),
        [
            (10.00, 200.0, 10.05, 100.0),
            (10.00, 500.0, 10.04, 100.0),
            (10.00, 300.0, 10.04, 100.0),
            (math.nan, math.nan, 10.04, 100.0),
            (10.01, 100.0, 10.03, 400.0),
        ],
    )
    assert nbbo["ts_ns"][0].as_py() == 1_514_903_400_000_000_000  # 09:30 EST = 14:30 UTC
    assert nbbo["bid"].null_count == 1  # an absent side is empty, not NaN


@pytest.mark.shared_data
def test_primary_venue_quote_never_crosses_and_merge_orders_ties(shared_data):
    table = read_taq(shared_data / TRADES, shared_data / QUOTES, quote_venues=frozenset({"N"}))
    assert table.schema == CANONICAL_SCHEMA
    quotes = table.filter(pc.equal(table["kind"], "quote"))
    assert np.all(quotes["bid"].to_numpy() < quotes["ask"].to_numpy())
    ts = table["ts_ns"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    # at equal timestamps, trades precede quotes
    kind = np.array(table["kind"].to_pylist())
    tie = ts[1:] == ts[:-1]
    assert not np.any(tie & (kind[:-1] == "quote") & (kind[1:] == "trade"))


def test_bad_trade_row_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "DT,EX,SYMBOL,COND,SIZE,PRICE,CORR\n"
        "2018-01-02T09:30:00.000-05:00,N,XXX,,100,10.0,0\n"
        "2018-01-02T09:30:00.001-05:00,N,XXX,,100,0,0\n"
        "2018-01-02T09:30:00.002-05:00,N,XXX,,100,-5,12\n"  # cancelled: its price is not checked
    )
    with pytest.raises(TickFileError, match=r"t\.csv.*\n  row 2, column 'PRICE' = 0\.0"):
        read_taq_trades(path)
    path.write_text("DT,EX,SYMBOL,COND,SIZE,PRICE,CORR\n2018-01-02T09:30:00.000,N,XXX,,100,10.0,0\n")
    with pytest.raises(TickFileError, match=r"row 1, column 'DT' = '2018-01-02T09:30:00.000': .*zone offset"):
        read_taq_trades(path)
