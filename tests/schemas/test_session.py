"""The session clock on real calendar days: expected times are the NYSE's published hours and holiday lists
(nyse.com, "Holidays and Trading Hours"), written out here, not read back from the calendar library."""

from __future__ import annotations

import pickle
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.session import (
    FIRST_DATE,
    LAST_DATE,
    XNYS,
    CalendarOverrides,
    CalendarRangeError,
    next_trading_day,
    regular_session,
    session_at,
    session_calendar,
    session_day,
    session_mask,
    trading_date,
)

S = 1_000_000_000
ET = ZoneInfo("America/New_York")

#: NYSE holidays and early closes (13:00 ET) as published for 2023 and 2024.
HOLIDAYS = {
    date(2023, 1, 2), date(2023, 1, 16), date(2023, 2, 20), date(2023, 4, 7), date(2023, 5, 29),
    date(2023, 6, 19), date(2023, 7, 4), date(2023, 9, 4), date(2023, 11, 23), date(2023, 12, 25),
    date(2024, 1, 1), date(2024, 1, 15), date(2024, 2, 19), date(2024, 3, 29), date(2024, 5, 27),
    date(2024, 6, 19), date(2024, 7, 4), date(2024, 9, 2), date(2024, 11, 28), date(2024, 12, 25),
}  # fmt: skip
EARLY_CLOSES = {date(2023, 7, 3), date(2023, 11, 24), date(2024, 7, 3), date(2024, 11, 29), date(2024, 12, 24)}


def utc(y: int, mo: int, d: int, hh: int, mm: int) -> int:
    return int(datetime(y, mo, d, hh, mm, tzinfo=UTC).timestamp()) * S


def hours_utc(day: date) -> tuple[str, str] | None:
    s = session_day(day)
    if s.open_ns == s.close_ns:
        return None
    return tuple(datetime.fromtimestamp(t // S, tz=UTC).strftime("%H:%M") for t in (s.open_ns, s.close_ns))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 3, 8), ("14:30", "21:00")),  # ordinary Friday under EST: 09:30-16:00 ET
        (date(2024, 3, 11), ("13:30", "20:00")),  # first Monday under EDT (DST began Sun 2024-03-10)
        (date(2024, 11, 4), ("14:30", "21:00")),  # back on EST (DST ended Sun 2024-11-03)
        (date(2024, 7, 3), ("13:30", "17:00")),  # early close 13:00 EDT
        (date(2024, 11, 29), ("14:30", "18:00")),  # day after Thanksgiving: 13:00 EST
        (date(2024, 12, 24), ("14:30", "18:00")),  # Christmas Eve: 13:00 EST
        (date(2024, 7, 4), None),  # Independence Day
        (date(2024, 3, 29), None),  # Good Friday
        (date(2024, 3, 9), None),  # Saturday
        (date(2018, 12, 5), None),  # national day of mourning (President G.H.W. Bush), an unscheduled closure
    ],
)
def test_published_session_hours(day: date, expected: tuple[str, str] | None) -> None:
    assert hours_utc(day) == expected


def test_every_day_of_2023_and_2024_matches_the_published_lists() -> None:
    day = date(2023, 1, 1)
    while day.year < 2025:
        s = session_day(day)
        hours = tuple(datetime.fromtimestamp(t // S, tz=ET).strftime("%H:%M") for t in (s.open_ns, s.close_ns))
        if day.weekday() >= 5 or day in HOLIDAYS:
            assert s.open_ns == s.close_ns == s.start_ns, day
        elif day in EARLY_CLOSES:
            assert hours == ("09:30", "13:00"), day
        else:
            assert hours == ("09:30", "16:00"), day
        day += timedelta(days=1)


@given(ts_ns=st.integers(min_value=utc(2023, 1, 1, 0, 0), max_value=utc(2025, 1, 1, 0, 0)))
def test_regular_session_matches_the_wall_clock_and_the_published_lists(ts_ns: int) -> None:
    # Oracle: ET wall time with datetime, the published holidays and early closes.
    wall = datetime.fromtimestamp(ts_ns // S, tz=ET)
    close = time(13, 0) if wall.date() in EARLY_CLOSES else time(16, 0)
    expected = wall.weekday() < 5 and wall.date() not in HOLIDAYS and time(9, 30) <= wall.time() < close
    assert regular_session(ts_ns) == expected


def test_the_early_close_ends_the_regular_session() -> None:
    assert regular_session(utc(2024, 11, 29, 18, 0) - 1)
    assert not regular_session(utc(2024, 11, 29, 18, 0))  # 13:00 EST
    assert not regular_session(utc(2024, 11, 29, 20, 0))  # 15:00 EST: a normal day would still be open
    assert regular_session(utc(2024, 11, 27, 20, 0))  # the Wednesday before: an ordinary day
    assert not regular_session(utc(2024, 7, 4, 15, 0))  # 11:00 EDT on a holiday


def test_session_mask_is_the_vectorised_regular_session() -> None:
    ts = np.array(
        [utc(2024, 3, 8, 14, 30) - 1, utc(2024, 3, 8, 14, 30), utc(2024, 3, 11, 13, 30), utc(2024, 7, 4, 15, 0)]
        + [utc(2024, 12, 24, 17, 59), utc(2024, 12, 24, 18, 0), utc(2024, 12, 26, 20, 59)]
    )
    assert session_mask(ts).tolist() == [False, True, True, False, True, False, True]
    assert session_mask(ts).tolist() == [regular_session(int(t)) for t in ts]


def test_trading_date_is_the_new_york_calendar_date() -> None:
    # 03:00 UTC on 2024-03-12 is 23:00 EDT on 2024-03-11; 04:00 UTC is midnight.
    assert trading_date(utc(2024, 3, 12, 3, 0)) == date(2024, 3, 11)
    assert trading_date(utc(2024, 3, 12, 4, 0) - 1) == date(2024, 3, 11)
    assert trading_date(utc(2024, 3, 12, 4, 0)) == date(2024, 3, 12)
    # Under EST midnight is 05:00 UTC.
    assert trading_date(utc(2024, 3, 8, 5, 0) - 1) == date(2024, 3, 7)
    assert session_at(utc(2024, 3, 8, 5, 0)).day == date(2024, 3, 8)


def test_next_trading_day_skips_weekends_and_holidays() -> None:
    assert next_trading_day(date(2024, 3, 8)) == date(2024, 3, 11)  # Fri -> Mon
    assert next_trading_day(date(2024, 3, 28)) == date(2024, 4, 1)  # Good Friday and a weekend
    assert next_trading_day(date(2024, 7, 3)) == date(2024, 7, 5)  # past July 4 (an early close is a session)
    assert next_trading_day(date(2024, 11, 27)) == date(2024, 11, 29)
    assert next_trading_day(date(2024, 1, 12)) == date(2024, 1, 16)  # MLK day


def test_overrides_add_closures_and_early_closes() -> None:
    cal = session_calendar(CalendarOverrides(closed=(date(2024, 3, 12),), early_closes=(date(2024, 3, 13),)))
    assert session_calendar(CalendarOverrides(closed=(date(2024, 3, 12),), early_closes=(date(2024, 3, 13),))) is cal
    tue, wed = session_day(date(2024, 3, 12), cal), session_day(date(2024, 3, 13), cal)
    assert tue.open_ns == tue.close_ns
    assert wed.close_ns == utc(2024, 3, 13, 17, 0)  # 13:00 EDT
    assert next_trading_day(date(2024, 3, 11), cal) == date(2024, 3, 13)
    assert not regular_session(utc(2024, 3, 13, 18, 0), cal) and regular_session(utc(2024, 3, 13, 18, 0))
    # The library's own calendar is untouched, and a closure the library already has changes nothing.
    assert session_day(date(2024, 3, 12)).close_ns == utc(2024, 3, 12, 20, 0)
    same = session_calendar(CalendarOverrides(closed=(date(2024, 7, 4),), early_closes=(date(2024, 11, 29),)))
    assert session_day(date(2024, 7, 4), same) == session_day(date(2024, 7, 4))
    assert session_day(date(2024, 11, 29), same) == session_day(date(2024, 11, 29))


def test_a_calendar_pickles_as_its_overrides() -> None:
    cal = session_calendar(CalendarOverrides(closed=(date(2024, 3, 12),)))
    session_day(date(2024, 3, 12), cal)
    blob = pickle.dumps(cal)
    assert len(blob) < 1_000  # not the cache
    assert pickle.loads(blob) is cal
    assert pickle.loads(pickle.dumps(XNYS)) is XNYS


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"closed": [date(2024, 3, 9)]}, "Saturday"),
        ({"closed": [date(2024, 3, 12)], "early_closes": [date(2024, 3, 12)]}, "both closed and an early close"),
        ({"early_closes": [date(2100, 3, 12)]}, "outside the exchange calendar"),
    ],
)
def test_unsound_overrides_are_refused(overrides, match) -> None:
    with pytest.raises(pydantic.ValidationError, match=match):
        CalendarOverrides(**overrides)


def test_outside_the_range_a_lookup_is_an_error_not_a_guess() -> None:
    assert FIRST_DATE == date(1999, 12, 31) and LAST_DATE == date(2099, 12, 31)
    with pytest.raises(CalendarRangeError, match=r"1998-06-01 is outside the exchange calendar"):
        session_day(date(1998, 6, 1))
    with pytest.raises(CalendarRangeError):
        next_trading_day(LAST_DATE)
    assert trading_date(utc(1998, 6, 1, 12, 0)) == date(1998, 6, 1)  # a time zone conversion needs no calendar


def test_the_library_table_is_cached_on_disk_and_rebuilt_when_unreadable(tmp_path, monkeypatch):
    from schemas import session

    monkeypatch.setenv("HRMCOND_CACHE_DIR", str(tmp_path / "cache"))
    built = session._library_table()
    path = session.library_cache_path()
    assert path.parent == tmp_path / "cache" and not path.exists()

    def load() -> tuple[np.ndarray, ...]:
        session._library.cache_clear()
        try:
            return session._library()
        finally:
            session._library.cache_clear()  # the next user builds its own (from this test's file otherwise)

    for table in (load(), load()):  # written by the first, read back by the second
        assert path.exists()
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(table, built, strict=True))
    path.write_bytes(b"not an npz")  # a torn or foreign file: built again and replaced
    assert all(np.array_equal(a, b) for a, b in zip(load(), built, strict=True))
    with np.load(path) as saved:
        assert np.array_equal(saved["closes"], built[2])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_calendar_works_where_its_cache_cannot_be_written(tmp_path, monkeypatch):
    from schemas import session

    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("HRMCOND_CACHE_DIR", str(blocked / "cache"))  # a directory under a file: cannot exist
    session._library.cache_clear()
    try:
        assert session._library_hours(date(2024, 7, 3)) == (
            int(datetime(2024, 7, 3, 13, 30, tzinfo=UTC).timestamp() * 1e9),
            int(datetime(2024, 7, 3, 17, 0, tzinfo=UTC).timestamp() * 1e9),
        )  # 09:30-13:00 New York (EDT): an early close
    finally:
        session._library.cache_clear()
