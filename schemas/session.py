"""The regular-session clock of US equities: New York wall-clock times as int ns UTC, and a vectorised session mask.

Time zone rules are the tz database's (:mod:`zoneinfo`), so DST needs no code here.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np

#: US equity market local time (sessions, LOBSTER timestamps, TAQ offsets).
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def new_york_ns(date: dt.date, wall_clock: dt.time) -> int:
    """Nanoseconds since the Unix epoch (UTC) of a New York wall-clock time on ``date`` (tz database DST)."""
    since_epoch = dt.datetime.combine(date, wall_clock, tzinfo=NEW_YORK) - _EPOCH
    return (since_epoch.days * 86_400 + since_epoch.seconds) * 1_000_000_000 + since_epoch.microseconds * 1_000


REGULAR_OPEN = dt.time(9, 30)
REGULAR_CLOSE = dt.time(16, 0)
_NS_PER_DAY = 86_400 * 1_000_000_000
#: New York is UTC-4 or UTC-5: shifting by 4 h maps every instant of a regular session onto its NY date.
_SESSION_DATE_SHIFT_NS = 4 * 3_600 * 1_000_000_000


def session_mask(
    ts_ns: np.ndarray, open_time: dt.time = REGULAR_OPEN, close_time: dt.time = REGULAR_CLOSE
) -> np.ndarray:
    """Boolean mask of the timestamps (int64 ns UTC) inside ``[open_time, close_time)`` New York time.

    Vectorised batch helper (tests, offline filtering); the live dataflow decides its session from config.
    Holidays and early closes are not known here: a half-day session needs its own ``close_time``.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    day = (ts_ns - _SESSION_DATE_SHIFT_NS) // _NS_PER_DAY
    mask = np.zeros(ts_ns.shape, dtype=bool)
    for d in np.unique(day):
        date = dt.date(1970, 1, 1) + dt.timedelta(days=int(d))
        on_day = day == d
        mask[on_day] = (ts_ns[on_day] >= new_york_ns(date, open_time)) & (ts_ns[on_day] < new_york_ns(date, close_time))
    return mask
