"""The one session clock of US equities: the exchange calendar (trading days, holidays, early closes) and New
York wall-clock times, as int ns UTC. Every session-aware part (bars, SSR/LULD, summaries, the day report,
importers, the simulator) asks here.

Trading days, holidays and early closes are those of the New York Stock Exchange calendar of
``exchange_calendars`` (``XNYS``, a maintained library; regular sessions 09:30-16:00 ET, 13:00 on an early
close), amended by :class:`CalendarOverrides` (``pipeline.session.overrides`` in the config) for what the
library does not know yet: an unscheduled closure (a national day of mourning, a storm) or an extra early
close. Time zone rules are the tz database's (:mod:`zoneinfo`), so DST needs no code here.

**Range.** The calendar covers the New York dates of every timestamp the wire accepts (2000-2100 UTC,
:data:`schemas.ticks.MIN_TS_NS`), :data:`FIRST_DATE` to :data:`LAST_DATE`. A lookup outside raises
:class:`CalendarRangeError`: a day with no known calendar is not guessed at. Past days are the exchange's
record as the library has it; future ones follow the library's holiday rules, which cannot foresee
unscheduled closures (add those as overrides when they are announced). :func:`trading_date`, a time zone
conversion, works on any date.

**Cost.** The library (it imports pandas) builds its session table in 1.3 s; that is done once per library
version and kept in a cache file (:func:`library_cache_path`), which a process reads on its first lookup (~1 ms).
Each calendar then caches one :class:`SessionDay` per date and one per UTC hour (a New York date always
starts on a whole UTC hour), and :func:`trading_date` one date per UTC hour, so the per-tick lookup
(:func:`session_at`) is one dict hit: 0.31 us against 0.21 us for a bare ``dict.get``
(``benchmarks/results/session_clock.json``). The caches grow by one entry per date and 24 per day of event
time seen: a few hundred KB per year.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import logging
import os
import warnings
import zoneinfo
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import model_validator

from schemas.errors import HrmcondError
from schemas.strict import Strict
from schemas.ticks import MAX_TS_NS, MIN_TS_NS

log = logging.getLogger(__name__)

#: US equity market local time (sessions, LOBSTER timestamps, TAQ offsets).
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3_600 * _NS_PER_S
_NS_PER_DAY = 24 * _NS_PER_HOUR
#: The library's calendar name: the New York Stock Exchange, whose sessions the LULD Plan and Rule 201 follow.
EXCHANGE = "XNYS"
#: The close of an early-close day (NYSE: the day after Thanksgiving, Christmas Eve, July 3).
EARLY_CLOSE = dt.time(13, 0)


def new_york_ns(date: dt.date, wall_clock: dt.time) -> int:
    """Nanoseconds since the Unix epoch (UTC) of a New York wall-clock time on ``date`` (tz database DST)."""
    since_epoch = dt.datetime.combine(date, wall_clock, tzinfo=NEW_YORK) - _EPOCH
    return (since_epoch.days * 86_400 + since_epoch.seconds) * _NS_PER_S + since_epoch.microseconds * 1_000


def new_york_time(ts_ns: int) -> dt.datetime:
    """``ts_ns`` as an aware New York datetime (microseconds), for display."""
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=NEW_YORK)


_DATE_BY_HOUR: dict[int, dt.date] = {}


def trading_date(ts_ns: int) -> dt.date:
    """The New York calendar date of ``ts_ns`` (int ns since the epoch): the date sessions, SSR and reference
    data key on. Cached per UTC hour."""
    hour = ts_ns // _NS_PER_HOUR
    date = _DATE_BY_HOUR.get(hour)
    if date is None:
        date = _DATE_BY_HOUR[hour] = dt.datetime.fromtimestamp(hour * 3_600, tz=NEW_YORK).date()
    return date


FIRST_DATE = trading_date(MIN_TS_NS)
LAST_DATE = trading_date(MAX_TS_NS - 1)


class CalendarRangeError(HrmcondError, ValueError):
    """A date outside :data:`FIRST_DATE`..:data:`LAST_DATE`, where no calendar is known."""


def _check_range(date: dt.date) -> dt.date:
    if not FIRST_DATE <= date <= LAST_DATE:
        raise CalendarRangeError(
            f"{date} is outside the exchange calendar ({EXCHANGE}, {FIRST_DATE}..{LAST_DATE}: the New York dates "
            "of the timestamps the wire accepts)"
        )
    return date


class SessionDay(NamedTuple):
    """One New York calendar date, in ns since the epoch (half-open intervals ``[start, end)``, ``[open, close)``).

    On a date without a regular session (weekend, holiday, closure) the session is empty:
    ``open_ns == close_ns == start_ns``.
    """

    day: dt.date
    start_ns: int  # 00:00 ET
    end_ns: int  # 00:00 ET of the next calendar date
    open_ns: int  # 09:30 ET
    close_ns: int  # 16:00 ET, 13:00 on an early close


class CalendarOverrides(Strict):
    """Amendments to the library's calendar, for days it does not know (yet). Both are New York dates.

    A closure on a date the library already closes changes nothing, and so does an early close on a date that
    is closed or already closes early: a library update that learns the day later keeps the config valid.
    """

    #: Dates with no regular session (an unscheduled closure such as a national day of mourning).
    closed: tuple[dt.date, ...] = ()
    #: Dates whose regular session ends at 13:00 ET.
    early_closes: tuple[dt.date, ...] = ()

    @model_validator(mode="after")
    def _sound(self) -> CalendarOverrides:
        for date in (*self.closed, *self.early_closes):
            _check_range(date)
            if date.weekday() >= 5:
                raise ValueError(f"{date} is a {date:%A}: there is no session to change")
        if both := sorted(set(self.closed) & set(self.early_closes)):
            raise ValueError(f"{', '.join(map(str, both))} both closed and an early close: which is it?")
        return self


class SessionCalendar:
    """The library's sessions amended by ``overrides``, with a per-date cache. Get one from
    :func:`session_calendar` and read it with the functions below; it pickles as its overrides (a state
    snapshot does not carry the cache)."""

    def __init__(self, overrides: CalendarOverrides) -> None:
        self.overrides = overrides
        self._closed = frozenset(overrides.closed)
        self._early = frozenset(overrides.early_closes)
        self._days: dict[dt.date, SessionDay] = {}
        self._by_hour: dict[int, SessionDay] = {}  # UTC hour (ns // 1 h) -> the session of its New York date

    def __reduce__(self) -> tuple[object, tuple[CalendarOverrides]]:
        return session_calendar, (self.overrides,)

    def __repr__(self) -> str:
        return f"SessionCalendar({EXCHANGE}, {self.overrides!r})"

    def _load(self, date: dt.date) -> SessionDay:
        start = new_york_ns(date, dt.time(0))
        end = new_york_ns(date + dt.timedelta(days=1), dt.time(0))
        hours = _library_hours(date)
        if hours is None or date in self._closed:
            day = SessionDay(date, start, end, start, start)
        else:
            open_ns, close_ns = hours
            if date in self._early:
                close_ns = min(close_ns, new_york_ns(date, EARLY_CLOSE))
            day = SessionDay(date, start, end, open_ns, close_ns)
        self._days[date] = day
        return day

    def _load_hour(self, hour: int) -> SessionDay:
        day = self._by_hour[hour] = session_day(trading_date(hour * _NS_PER_HOUR), self)
        return day


NO_OVERRIDES = CalendarOverrides()
_CALENDARS: dict[CalendarOverrides, SessionCalendar] = {}


def session_calendar(overrides: CalendarOverrides = NO_OVERRIDES) -> SessionCalendar:
    """The calendar with these overrides: one instance (and cache) per process for equal overrides."""
    calendar = _CALENDARS.get(overrides)
    if calendar is None:
        calendar = _CALENDARS[overrides] = SessionCalendar(overrides)
    return calendar


#: The library's calendar without overrides: the default of every function here.
XNYS = session_calendar()


@functools.cache
def _library() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The library's sessions ``FIRST_DATE..LAST_DATE``: (dates as days since the epoch, open ns, close ns), from
    the cache file when there is one (:func:`library_cache_path`), else from the library, then saved there."""
    path = library_cache_path()
    try:
        with np.load(path) as saved:
            return saved["days"], saved["opens"], saved["closes"]
    except (OSError, ValueError, KeyError):  # none yet, or unreadable: build it again
        pass
    table = _library_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:  # an open file: np.savez would append ".npz" to a name
            np.savez(f, days=table[0], opens=table[1], closes=table[2])
        os.replace(tmp, path)  # whole or not at all, whichever process writes last
    except OSError as err:  # a read-only home: every process builds the table itself, as before
        log.info("calendar cache not written (%s); the table is built in each process", err)
    return table


def library_cache_path() -> Path:
    """Where the library's session table is kept between processes: building it imports pandas and takes ~1.3 s
    per process, reading it back ~1 ms. Named by the ``exchange_calendars`` version and the range, so a new
    version of the library (new holiday rules) makes a new file. ``$HRMCOND_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hrmcond``, else ``~/.cache/hrmcond``."""
    base = os.environ.get("HRMCOND_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "hrmcond"
    )
    name = f"{EXCHANGE}-{importlib.metadata.version('exchange_calendars')}-{FIRST_DATE}-{LAST_DATE}.npz"
    return Path(base, name)


def _library_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_library` from the library itself."""
    # Imported here, not at the top: it pulls in pandas (~1 s), which only building the table needs.
    import exchange_calendars

    with warnings.catch_warnings():
        # exchange_calendars 4.13 calls pandas API that pandas 3.1 deprecates: the library's to fix, not a user's.
        warnings.simplefilter("ignore", DeprecationWarning)
        cal = exchange_calendars.get_calendar(EXCHANGE, start=FIRST_DATE.isoformat(), end=LAST_DATE.isoformat())
    return cal.sessions_nanos // _NS_PER_DAY, cal.opens_nanos, cal.closes_nanos


def _library_hours(date: dt.date) -> tuple[int, int] | None:
    """``(open_ns, close_ns)`` of the library's session on ``date``, or None if it holds none."""
    days, opens, closes = _library()
    ordinal = (_check_range(date) - dt.date(1970, 1, 1)).days
    i = int(np.searchsorted(days, ordinal))
    if i == len(days) or days[i] != ordinal:
        return None
    return int(opens[i]), int(closes[i])


def session_day(date: dt.date, calendar: SessionCalendar = XNYS) -> SessionDay:
    """The session of the New York date ``date`` (cached: after the first call a dict hit)."""
    return calendar._days.get(date) or calendar._load(date)


def session_at(ts_ns: int, calendar: SessionCalendar = XNYS) -> SessionDay:
    """The session of the New York date of ``ts_ns`` (int ns; cached per UTC hour: the per-tick lookup)."""
    hour = ts_ns // _NS_PER_HOUR
    return calendar._by_hour.get(hour) or calendar._load_hour(hour)


def regular_session(ts_ns: int, calendar: SessionCalendar = XNYS) -> bool:
    """Whether ``ts_ns`` lies in a regular session: open <= t < close on a trading date."""
    day = session_at(ts_ns, calendar)
    return day.open_ns <= ts_ns < day.close_ns


def next_trading_day(date: dt.date, calendar: SessionCalendar = XNYS) -> dt.date:
    """The first date after ``date`` with a regular session (skips weekends, holidays and closures)."""
    nxt = date + dt.timedelta(days=1)
    while (day := session_day(nxt, calendar)).open_ns == day.close_ns:
        nxt += dt.timedelta(days=1)
    return nxt


def session_mask(ts_ns: np.ndarray, calendar: SessionCalendar = XNYS) -> np.ndarray:
    """Boolean mask of the timestamps (int64 ns UTC) inside a regular session: the vectorised
    :func:`regular_session`, for batch use (tests, offline filtering)."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    hours, at = np.unique(ts_ns // _NS_PER_HOUR, return_inverse=True)
    days = [session_at(int(h) * _NS_PER_HOUR, calendar) for h in hours]
    opens = np.array([d.open_ns for d in days], dtype=np.int64)[at]
    closes = np.array([d.close_ns for d in days], dtype=np.int64)[at]
    return (ts_ns >= opens) & (ts_ns < closes)
