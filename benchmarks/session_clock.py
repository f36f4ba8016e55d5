"""Cost of the session clock (schemas/session.py): the per-tick lookup against a bare dict hit, and the one-off
load of the exchange calendar.

Run: ``.venv/bin/python benchmarks/session_clock.py``; writes ``benchmarks/results/session_clock.json``.

Per-call times are the best of 5 repeats of 200,000 calls (``timeit``), cache hits on one timestamp as on the
hot path, where consecutive ticks share their hour. The load (library import, calendar build, first date) is
timed in a fresh interpreter.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import timeit

from results_file import write_results

from schemas.session import new_york_ns, regular_session, session_at, session_day, trading_date

CALLS = 200_000
LOAD = (
    "import time; t = time.perf_counter(); import datetime as dt; from schemas.session import session_day; "
    "session_day(dt.date(2024, 11, 29)); print(time.perf_counter() - t)"
)


def per_call_ns(stmt: str, env: dict) -> float:
    return round(min(timeit.repeat(stmt, globals=env, number=CALLS, repeat=5)) / CALLS * 1e9, 1)


def main() -> None:
    ts = new_york_ns(dt.date(2024, 11, 29), dt.time(10, 0))
    hour = ts // 3_600_000_000_000
    env = {
        "ts": ts,
        "hours": {hour: session_at(ts)},
        "trading_date": trading_date,
        "session_at": session_at,
        "regular_session": regular_session,
    }
    loads = [float(subprocess.check_output([sys.executable, "-c", LOAD], text=True)) for _ in range(3)]
    day = dt.date(2030, 1, 2)
    misses = []
    for _ in range(200):  # a date not seen yet: the calendar's per-date build
        misses.append(timeit.timeit(lambda d=day: session_day(d), number=1))
        day += dt.timedelta(days=1)
    write_results(
        "session_clock",
        {
            "calls_per_figure": CALLS,
            "per_call_ns": {
                "bare dict.get(ts // 1 h) (reference)": per_call_ns("hours.get(ts // 3_600_000_000_000)", env),
                "trading_date(ts)": per_call_ns("trading_date(ts)", env),
                "session_at(ts)": per_call_ns("session_at(ts)", env),
                "regular_session(ts)": per_call_ns("regular_session(ts)", env),
            },
            "new_date_us_median": round(sorted(misses)[len(misses) // 2] * 1e6, 1),
            "first_lookup_in_fresh_process_s": round(min(loads), 2),
        },
        echo=True,
    )


if __name__ == "__main__":
    main()
