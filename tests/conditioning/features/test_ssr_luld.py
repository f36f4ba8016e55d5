"""SSR (Rule 201) and LULD: the pure rules and a scenario test for every transition of the tracker.

Expected values come from the rule texts (docs/reference.md, SEC Rule 201, the LULD Plan), cited beside the
asserts; times are built with an independent path (``datetime`` in ET) from the session clock.
"""

from __future__ import annotations

import math
import pickle
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from conditioning.features.ssr_luld import (
    LIMIT_STATE_TIMEOUT_NS,
    TRADING_PAUSE_NS,
    OutOfOrderError,
    SsrLuldEvent,
    SsrLuldInputError,
    SsrLuldTracker,
    luld_bands,
    luld_percentage,
    ssr_trigger_price,
)
from schemas.layout import SsrLuldState
from schemas.session import CalendarOverrides, next_trading_day, session_calendar

ET = ZoneInfo("America/New_York")
S = 1_000_000_000
MON, TUE, WED, THU = date(2024, 3, 11), date(2024, 3, 12), date(2024, 3, 13), date(2024, 3, 14)
FRI = date(2024, 3, 8)


def et(day: date, hh: int, mm: int, ss: int = 0, ns: int = 0) -> int:
    """ns since the epoch of a US/Eastern wall-clock time."""
    return int(datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=ET).timestamp()) * S + ns


class Recording(SsrLuldTracker):
    """A tracker that keeps its transitions for the test to read (the dataflow's keeps none)."""

    def __init__(self, symbol: str, **kwargs) -> None:
        self.events: list[SsrLuldEvent] = []
        super().__init__(symbol, on_event=self.events.append, **kwargs)

    def drain_events(self) -> list[SsrLuldEvent]:
        """The transitions since the last call, oldest first."""
        drained = self.events[:]
        self.events.clear()
        return drained


def kinds(tracker: Recording) -> list[str]:
    return [e.kind for e in tracker.drain_events()]


def opened(prev_close: float = 100.0, tier: int = 1, day: date = MON, open_price: float = 100.0):
    """A tracker whose LULD reference is ``open_price`` from a 10:00 trade (outside the doubling windows)."""
    t = Recording("XYZ")
    t.on_reference(day, prev_close, tier)
    t.on_trade(et(day, 10, 0), open_price, 100)
    t.drain_events()
    return t


# ------------------------------------------------------------------------------------------- LULD rules


@pytest.mark.parametrize(
    ("prev_close", "tier", "expected"),
    [
        # LULD Plan Appendix A (docs/reference.md table): > $3.00 -> 5% / 10%; $0.75-$3.00 -> 20%;
        # < $0.75 -> lesser of $0.15 or 75%.
        (3.01, 1, (0.05, None)),
        (3.01, 2, (0.10, None)),
        (3.00, 1, (0.20, None)),
        (3.00, 2, (0.20, None)),
        (0.75, 1, (0.20, None)),
        (0.75, 2, (0.20, None)),
        (0.7499, 1, (0.75, 0.15)),
        (0.7499, 2, (0.75, 0.15)),
    ],
)
def test_luld_percentage_table(prev_close: float, tier: int, expected: tuple) -> None:
    assert luld_percentage(prev_close, tier) == expected


@pytest.mark.parametrize(
    ("reference", "prev_close", "tier", "wall", "expected"),
    [
        # 5% (Tier 1 > $3) around 100, undoubled at 10:00
        (100.0, 50.0, 1, (10, 0), (95.0, 105.0)),
        # Opening doubling 09:30 <= t < 09:45: 10%
        (100.0, 50.0, 1, (9, 30), (90.0, 110.0)),
        (100.0, 50.0, 1, (9, 45), (95.0, 105.0)),
        # Closing doubling 15:35 <= t < 16:00 for Tier 1: 10%
        (100.0, 50.0, 1, (15, 34), (95.0, 105.0)),
        (100.0, 50.0, 1, (15, 35), (90.0, 110.0)),
        # ... not for Tier 2 above $3.00 (10% stays 10%), but for Tier 2 at or below $3.00 (20% -> 40%)
        (100.0, 50.0, 2, (15, 35), (90.0, 110.0)),
        (2.0, 2.0, 2, (15, 35), (1.2, 2.8)),
        (2.0, 2.0, 2, (9, 30), (1.2, 2.8)),
        # < $0.75: lesser of $0.15 or 75% of the reference: 0.15 at 0.50, 0.075 at 0.10
        (0.50, 0.50, 1, (10, 0), (0.35, 0.65)),
        (0.10, 0.50, 2, (10, 0), (0.025, 0.175)),
        # doubled: lesser of $0.30 or 150%; a lower band below zero is clamped at 0
        (0.10, 0.50, 1, (9, 31), (0.0, 0.25)),
        (0.50, 0.50, 1, (9, 31), (0.20, 0.80)),
    ],
)
def test_luld_bands(reference, prev_close, tier, wall, expected) -> None:
    lower, upper = luld_bands(reference, prev_close, tier, et(MON, *wall))
    assert lower == pytest.approx(expected[0], rel=1e-12, abs=1e-15)
    assert upper == pytest.approx(expected[1], rel=1e-12)


def test_doubling_windows_are_half_open_to_the_nanosecond() -> None:
    assert luld_bands(100.0, 50.0, 1, et(MON, 9, 45) - 1) == pytest.approx((90.0, 110.0))
    assert luld_bands(100.0, 50.0, 1, et(MON, 15, 35) - 1) == pytest.approx((95.0, 105.0))
    assert luld_bands(100.0, 50.0, 1, et(MON, 16, 0) - 1) == pytest.approx((90.0, 110.0))


@pytest.mark.parametrize("early_close", [date(2024, 11, 29), date(2024, 12, 24), date(2024, 7, 3)])
def test_closing_doubling_is_the_last_25_minutes_before_an_early_close(early_close: date) -> None:
    # NYSE closes at 13:00 ET on these days; the LULD Plan doubles the bands in the last 25 minutes of trading.
    assert luld_bands(100.0, 50.0, 1, et(early_close, 12, 35) - 1) == pytest.approx((95.0, 105.0))
    assert luld_bands(100.0, 50.0, 1, et(early_close, 12, 35)) == pytest.approx((90.0, 110.0))
    assert luld_bands(100.0, 50.0, 1, et(early_close, 13, 0) - 1) == pytest.approx((90.0, 110.0))
    assert luld_bands(100.0, 50.0, 2, et(early_close, 12, 40)) == pytest.approx((90.0, 110.0))  # Tier 2 > $3: 10%
    with pytest.raises(SsrLuldInputError, match="outside the regular session"):
        luld_bands(100.0, 50.0, 1, et(early_close, 13, 0))
    with pytest.raises(SsrLuldInputError, match="outside the regular session"):
        luld_bands(100.0, 50.0, 1, et(early_close, 15, 35))  # the doubling of an ordinary day's close


def test_an_override_early_close_moves_the_closing_doubling() -> None:
    calendar = session_calendar(CalendarOverrides(early_closes=(MON,)))
    assert luld_bands(100.0, 50.0, 1, et(MON, 12, 34), calendar) == pytest.approx((95.0, 105.0))
    assert luld_bands(100.0, 50.0, 1, et(MON, 12, 35), calendar) == pytest.approx((90.0, 110.0))
    assert luld_bands(100.0, 50.0, 1, et(MON, 12, 35)) == pytest.approx((95.0, 105.0))  # the library's MON


def test_no_luld_bands_on_a_holiday() -> None:
    with pytest.raises(SsrLuldInputError, match="outside the regular session"):
        luld_bands(100.0, 50.0, 1, et(date(2024, 7, 4), 11, 0))


@pytest.mark.parametrize("wall", [(9, 29, 59), (16, 0, 0), (20, 0, 0)])
def test_no_luld_bands_outside_regular_session(wall) -> None:
    with pytest.raises(SsrLuldInputError, match="outside the regular session"):
        luld_bands(100.0, 50.0, 1, et(MON, *wall))


@pytest.mark.parametrize(
    "call",
    [
        lambda: luld_percentage(0.0, 1),
        lambda: luld_percentage(math.nan, 1),
        lambda: luld_percentage(10.0, 3),
        lambda: luld_bands(-1.0, 10.0, 1, et(MON, 10, 0)),
        lambda: luld_bands(10.0, 10.0, 1, float(et(MON, 10, 0))),
        lambda: ssr_trigger_price(math.inf),
    ],
)
def test_pure_functions_reject_bad_input(call) -> None:
    with pytest.raises(SsrLuldInputError):
        call()


# ------------------------------------------------------------------------------------------- SSR


def test_ssr_triggers_at_exactly_minus_10_percent_not_at_minus_9_99() -> None:
    # Rule 201(b)(1)(i): a decline "by 10% or more" from the prior close triggers.
    t = Recording("XYZ")
    t.on_reference(MON, 10.00, 2)
    t.on_trade(et(MON, 10, 0), 9.001, 100)  # -9.99%
    assert t.state_at(et(MON, 10, 0)) == SsrLuldState.NORMAL
    t.on_trade(et(MON, 10, 1), 9.00, 100)  # -10.00%
    assert t.state_at(et(MON, 10, 1)) == SsrLuldState.SSR_ACTIVE
    assert kinds(t)[-1] == "ssr_trigger"


def test_ssr_trigger_is_immune_to_binary_rounding_of_the_threshold() -> None:
    # 0.9 * 33.33 evaluates to 29.996999999999996 in binary; the exact 90% (29.997) must still trigger.
    t = Recording("XYZ")
    t.on_reference(MON, 33.33, 1)
    t.on_trade(et(MON, 10, 0), 29.997, 100)
    assert t.ssr_in_effect


@pytest.mark.parametrize("wall", [(8, 0), (16, 0), (19, 59)])
def test_ssr_ignores_extended_hours_sales(wall) -> None:
    # docs/reference.md: the trigger is judged on last sales during regular hours.
    t = Recording("XYZ")
    t.on_reference(MON, 10.0, 1)
    t.on_trade(et(MON, *wall), 5.0, 100)
    assert t.state_at(et(MON, *wall)) == SsrLuldState.NORMAL


def test_ssr_carries_over_to_the_whole_next_day_then_expires() -> None:
    # Rule 201(b)(1)(ii): in effect for the remainder of the day and the following day.
    t = Recording("XYZ")
    t.on_reference(MON, 10.0, 1)
    t.on_trade(et(MON, 11, 0), 8.5, 100)
    assert t.state_at(et(MON, 23, 59, 59)) == SsrLuldState.SSR_ACTIVE
    # Tuesday: no reference data needed for a carry-over, extended hours included.
    assert t.state_at(et(TUE, 4, 0)) == SsrLuldState.SSR_ACTIVE
    assert not t.has_reference
    assert t.state_at(et(WED, 0, 0) - 1) == SsrLuldState.SSR_ACTIVE
    assert t.state_at(et(WED, 0, 0)) == SsrLuldState.NORMAL
    events = t.drain_events()
    assert [e.kind for e in events] == ["ssr_trigger", "ssr_carryover", "ssr_expire"]
    assert events[1].ts_ns == et(TUE, 0, 0)
    assert events[2].ts_ns == et(WED, 0, 0)


def test_friday_trigger_carries_over_the_weekend_to_monday_or_past_a_closure() -> None:
    for calendar, last_day in ((session_calendar(), MON), (session_calendar(CalendarOverrides(closed=(MON,))), TUE)):
        t = Recording("XYZ", calendar=calendar)
        t.on_reference(FRI, 10.0, 1)
        t.on_trade(et(FRI, 15, 0), 9.0, 100)
        assert t.state_at(et(last_day, 15, 0)) == SsrLuldState.SSR_ACTIVE
        assert t.state_at(et(next_trading_day(last_day, calendar), 9, 0)) == SsrLuldState.NORMAL


def test_a_trigger_before_a_holiday_carries_over_past_it() -> None:
    # Wed 2024-07-03 (an early close), Thu 07-04 Independence Day: the "following day" is Fri 07-05.
    t = Recording("XYZ")
    t.on_reference(date(2024, 7, 3), 10.0, 1)
    t.on_trade(et(date(2024, 7, 3), 12, 0), 9.0, 100)
    assert t.state_at(et(date(2024, 7, 5), 15, 59)) == SsrLuldState.SSR_ACTIVE
    assert t.state_at(et(date(2024, 7, 6), 0, 0)) == SsrLuldState.NORMAL
    assert t.drain_events()[0].detail.endswith("in effect through 2024-07-05")


def test_the_early_close_ends_a_limit_state_and_the_day_s_bands() -> None:
    day = date(2024, 11, 29)
    t = Recording("XYZ")
    t.on_reference(day, 100.0, 1)
    t.on_trade(et(day, 12, 50), 100.0, 100)  # reference 100, doubled bands 90/110 (12:35-13:00)
    assert t.bands == pytest.approx((90.0, 110.0))
    t.on_quote(et(day, 12, 59, 50), 110.0, 110.05)  # NBB at the upper band
    assert t.state_at(et(day, 12, 59, 55)) == SsrLuldState.LULD_LIMIT
    assert t.state_at(et(day, 13, 0)) == SsrLuldState.NORMAL  # 10 s in: the close ends it, no pause follows
    assert [(e.kind, e.ts_ns, e.detail) for e in t.drain_events()][-1] == (
        "limit_exit",
        et(day, 13, 0),
        "session close",
    )
    assert t.bands is None
    t.on_trade(et(day, 14, 0), 120.0, 100)  # after the early close: no LULD
    assert t.bands is None and t.state_at(et(day, 14, 0)) == SsrLuldState.NORMAL


def test_ssr_retrigger_on_the_carryover_day_extends_it() -> None:
    t = Recording("XYZ")
    t.on_reference(MON, 10.0, 1)
    t.on_reference(TUE, 9.0, 1)  # may arrive ahead of its date
    t.on_trade(et(MON, 10, 0), 9.0, 100)
    t.on_trade(et(TUE, 10, 0), 8.10, 100)  # -10% from Tuesday's prior close 9.00
    assert t.state_at(et(WED, 15, 0)) == SsrLuldState.SSR_ACTIVE
    assert t.state_at(et(THU, 9, 0)) == SsrLuldState.NORMAL
    assert kinds(t) == ["ssr_trigger", "ssr_carryover", "ssr_trigger", "ssr_carryover", "ssr_expire"]


def test_without_reference_data_ssr_cannot_trigger() -> None:
    t = Recording("XYZ")
    t.on_trade(et(MON, 10, 0), 0.01, 100)
    assert not t.has_reference
    assert t.state_at(et(MON, 10, 0)) == SsrLuldState.NORMAL
    assert t.bands is None
    assert kinds(t) == []


def test_reference_for_a_past_date_is_an_error() -> None:
    t = opened()
    with pytest.raises(SsrLuldInputError, match="arrived after that date"):
        t.on_reference(FRI, 10.0, 1)


# ------------------------------------------------------------------------------------------- LULD reference


def test_opening_trade_is_the_first_reference_with_doubled_bands() -> None:
    t = Recording("XYZ")
    t.on_reference(MON, 100.0, 1)
    t.on_trade(et(MON, 9, 30, 2), 102.0, 100)
    assert t.reference_price == 102.0
    assert t.bands == pytest.approx((102.0 * 0.90, 102.0 * 1.10))  # 5% doubled
    # After 09:45 the same reference gives the undoubled band, even before another trade.
    t.on_quote(et(MON, 9, 50), 101.0, 101.1)
    assert t.bands == pytest.approx((102.0 * 0.95, 102.0 * 1.05))


def test_reference_moves_only_by_at_least_one_percent() -> None:
    t = opened()  # reference 100 from the 10:00:00 trade
    t.on_trade(et(MON, 10, 1), 101.5, 100)  # mean 100.75: +0.75% < 1% -> unchanged
    assert t.reference_price == 100.0
    t.on_trade(et(MON, 10, 2), 102.5, 100)  # mean 101.333: +1.33% -> moves
    assert t.reference_price == pytest.approx(304.0 / 3)
    assert t.bands == pytest.approx((304.0 / 3 * 0.95, 304.0 / 3 * 1.05))


def test_reference_window_is_the_preceding_five_minutes() -> None:
    t = opened()  # 10:00:00 @ 100
    t.on_trade(et(MON, 10, 4, 59), 100.0, 100)
    # At 10:05:00 the 10:00:00 trade is 300 s old and out of the window: mean (100 + 103) / 2 = 101.5
    # (with it, the mean would be 101).
    t.on_trade(et(MON, 10, 5, 0), 103.0, 100)
    assert t.reference_price == pytest.approx(101.5)


# ------------------------------------------------------------------------------------------- limit state


@pytest.mark.parametrize(
    ("bid", "ask", "limit"),
    [
        (105.0, 105.05, True),  # NBB equals the upper band 105
        (104.996, 105.05, True),  # within half a cent
        (104.99, 105.05, False),  # a cent below
        (105.5, 105.6, True),  # NBB above the upper band counts too
        (94.9, 95.0, True),  # NBO equals the lower band 95
        (94.9, 95.01, False),
        (0.0, 95.0, True),  # one-sided: no bid
        (math.nan, 96.0, False),
        (105.0, 0.0, True),  # no offer
    ],
)
def test_limit_state_at_a_band(bid: float, ask: float, limit: bool) -> None:
    t = opened()  # bands 95 / 105 (Tier 1, 5%)
    t.on_quote(et(MON, 10, 1), bid, ask)
    expected = SsrLuldState.LULD_LIMIT if limit else SsrLuldState.NORMAL
    assert t.state_at(et(MON, 10, 1)) == expected


def test_limit_state_cleared_before_15_seconds() -> None:
    t = opened()
    start = et(MON, 10, 1)
    t.on_quote(start, 105.0, 105.05)
    t.on_quote(start + LIMIT_STATE_TIMEOUT_NS - 1, 104.9, 105.0)
    assert t.state_at(start + LIMIT_STATE_TIMEOUT_NS + 60 * S) == SsrLuldState.NORMAL
    assert kinds(t) == ["limit_enter", "limit_exit"]


def test_crossed_nbbo_neither_enters_nor_clears_a_limit_state() -> None:
    t = opened()
    start = et(MON, 10, 1)
    t.on_quote(start, 105.2, 104.0)  # bid above the upper band, but crossed: not a market
    assert t.state_at(start + S) == SsrLuldState.NORMAL and kinds(t) == []
    t.on_quote(start + S, 105.0, 105.05)  # a sound NBBO at the band
    t.on_quote(start + 2 * S, 104.0, 103.9)  # crossed again: the limit state stands
    assert t.state_at(start + 3 * S) == SsrLuldState.LULD_LIMIT
    assert kinds(t) == ["limit_enter"]


def test_limit_state_becomes_a_five_minute_pause_at_15_seconds() -> None:
    t = opened()
    start = et(MON, 10, 1)
    t.on_quote(start, 105.0, 105.05)
    assert t.state_at(start + LIMIT_STATE_TIMEOUT_NS - 1) == SsrLuldState.LULD_LIMIT
    # A quote leaving the band at exactly 15 s is too late: the pause has begun.
    t.on_quote(start + LIMIT_STATE_TIMEOUT_NS, 104.0, 104.1)
    pause_start = start + LIMIT_STATE_TIMEOUT_NS
    assert t.state_at(pause_start) == SsrLuldState.HALTED
    assert t.bands is None
    assert t.state_at(pause_start + TRADING_PAUSE_NS - 1) == SsrLuldState.HALTED
    assert t.state_at(pause_start + TRADING_PAUSE_NS) == SsrLuldState.NORMAL
    events = t.drain_events()
    assert [(e.kind, e.ts_ns) for e in events] == [
        ("limit_enter", start),
        ("pause_start", pause_start),
        ("pause_end", pause_start + TRADING_PAUSE_NS),
    ]
    # Trading resumes: the reopening trade is the new reference.
    assert t.bands is None
    t.on_trade(pause_start + TRADING_PAUSE_NS + S, 110.0, 100)
    assert t.bands == pytest.approx((104.5, 115.5))


def test_pause_is_driven_by_any_later_event_not_only_state_at() -> None:
    t = opened()
    start = et(MON, 10, 1)
    t.on_quote(start, 105.0, 105.05)
    t.on_trade(start + 20 * S, 105.0, 100)  # after the 15 s deadline: ignored by LULD (paused)
    assert [e.kind for e in t.drain_events()] == ["limit_enter", "pause_start"]
    assert t.reference_price is None


def test_band_move_can_end_a_limit_state() -> None:
    t = opened()
    t.on_quote(et(MON, 10, 1), 105.0, 105.05)
    # Trades at 108 lift the 5-minute mean to 104 (>= 1%): new upper band 109.2, the NBB is no longer at it.
    t.on_trade(et(MON, 10, 1, 5), 108.0, 100)
    assert t.reference_price == pytest.approx(104.0)
    assert t.state_at(et(MON, 10, 1, 5)) == SsrLuldState.NORMAL


def test_closing_doubling_widens_the_bands_in_the_tracker() -> None:
    t = opened()  # reference 100, Tier 1
    t.on_quote(et(MON, 15, 36), 109.0, 109.1)  # inside the doubled 90 / 110 band
    assert t.state_at(et(MON, 15, 36)) == SsrLuldState.NORMAL
    t.on_quote(et(MON, 15, 37), 110.0, 110.1)
    assert t.state_at(et(MON, 15, 37)) == SsrLuldState.LULD_LIMIT


def test_no_luld_outside_regular_hours() -> None:
    t = Recording("XYZ")
    t.on_reference(MON, 100.0, 1)
    t.on_trade(et(MON, 8, 0), 100.0, 100)
    t.on_quote(et(MON, 8, 1), 500.0, 500.1)
    assert t.bands is None
    assert t.state_at(et(MON, 9, 0)) == SsrLuldState.NORMAL
    t.on_quote(et(MON, 9, 1), 99.9, 100.1)  # the NBBO stands into the session: bring it back inside
    t.on_trade(et(MON, 15, 59), 100.0, 100)
    t.on_quote(et(MON, 15, 59, 50), 110.0, 110.1)  # at the doubled upper band
    assert t.state_at(et(MON, 15, 59, 55)) == SsrLuldState.LULD_LIMIT
    # The close ends the limit state (before its 15 s ran out) and LULD with it.
    assert t.state_at(et(MON, 16, 0)) == SsrLuldState.NORMAL
    assert t.bands is None
    events = t.drain_events()
    assert [(e.kind, e.ts_ns) for e in events] == [("limit_enter", et(MON, 15, 59, 50)), ("limit_exit", et(MON, 16, 0))]
    t.on_quote(et(MON, 16, 5), 500.0, 500.1)
    assert t.state_at(et(MON, 16, 5)) == SsrLuldState.NORMAL


def test_a_computed_pause_ends_at_the_close() -> None:
    t = Recording("XYZ")
    t.on_reference(MON, 100.0, 1)
    t.on_trade(et(MON, 15, 50), 100.0, 100)
    t.on_quote(et(MON, 15, 58), 110.0, 110.1)
    assert t.state_at(et(MON, 15, 59)) == SsrLuldState.HALTED
    assert t.state_at(et(MON, 16, 0)) == SsrLuldState.NORMAL
    assert kinds(t) == ["limit_enter", "pause_start", "pause_end"]


# ------------------------------------------------------------------------------------------- precedence


def test_ssr_overlapping_luld_follows_the_precedence() -> None:
    # HALTED > LULD_LIMIT > SSR_ACTIVE > NORMAL (docs/reference.md); SSR keeps running underneath.
    t = Recording("XYZ")
    t.on_reference(MON, 100.0, 1)
    t.on_trade(et(MON, 10, 0), 90.0, 100)  # SSR trigger; LULD reference 90, bands 85.5 / 94.5
    assert t.state_at(et(MON, 10, 0)) == SsrLuldState.SSR_ACTIVE
    t.on_quote(et(MON, 10, 1), 85.0, 85.5)
    assert t.state_at(et(MON, 10, 1)) == SsrLuldState.LULD_LIMIT
    assert t.state_at(et(MON, 10, 1, 15)) == SsrLuldState.HALTED
    assert t.ssr_in_effect
    assert t.state_at(et(MON, 10, 6, 15)) == SsrLuldState.SSR_ACTIVE


# ------------------------------------------------------------------------------------------- feed status


def test_feed_halt_overrides_and_releases() -> None:
    t = opened()
    t.on_status(et(MON, 10, 5), halted=True)
    assert t.state_at(et(MON, 10, 5)) == SsrLuldState.HALTED
    t.on_quote(et(MON, 10, 6), 200.0, 200.1)  # no LULD while halted
    # A halt is only released by the feed, even across dates.
    assert t.state_at(et(TUE, 10, 0)) == SsrLuldState.HALTED
    t.on_status(et(TUE, 10, 1), halted=False)
    assert t.state_at(et(TUE, 10, 1)) == SsrLuldState.NORMAL


def test_leaving_a_feed_halt_restarts_luld_from_the_reopening_trade() -> None:
    t = opened()
    t.on_status(et(MON, 10, 5), halted=True)
    t.on_status(et(MON, 10, 20), halted=False)
    assert t.bands is None
    t.on_trade(et(MON, 10, 20, 1), 120.0, 100)
    assert t.bands == pytest.approx((114.0, 126.0))


def test_feed_luld_pause_holds_past_five_minutes_until_released() -> None:
    t = opened()
    t.on_status(et(MON, 10, 5), luld_pause=True)
    assert t.state_at(et(MON, 10, 15)) == SsrLuldState.HALTED
    t.on_status(et(MON, 10, 16), luld_pause=False)
    assert t.state_at(et(MON, 10, 16)) == SsrLuldState.NORMAL
    assert kinds(t) == ["feed_status", "pause_start", "feed_status", "pause_end"]


def test_feed_releases_a_computed_pause_early() -> None:
    t = opened()
    t.on_quote(et(MON, 10, 1), 105.0, 105.05)
    assert t.state_at(et(MON, 10, 1, 15)) == SsrLuldState.HALTED
    t.on_status(et(MON, 10, 3), luld_pause=False)
    assert t.state_at(et(MON, 10, 3)) == SsrLuldState.NORMAL


def test_feed_ssr_overrides_computed_ssr_for_the_rest_of_the_date() -> None:
    t = Recording("XYZ")
    t.on_reference(MON, 10.0, 1)
    t.on_trade(et(MON, 10, 0), 9.0, 100)
    t.on_status(et(MON, 10, 1), ssr=False)  # the feed says no restriction: it wins today
    assert t.state_at(et(MON, 10, 1)) == SsrLuldState.NORMAL
    # The date roll clears the override; the computed carry-over applies until the feed speaks again.
    assert t.state_at(et(TUE, 4, 0)) == SsrLuldState.SSR_ACTIVE
    t.on_status(et(WED, 4, 0), ssr=True)  # e.g. a trigger the computation could not see
    assert t.state_at(et(WED, 23, 0)) == SsrLuldState.SSR_ACTIVE
    assert t.state_at(et(THU, 0, 0)) == SsrLuldState.NORMAL


def test_feed_bands_replace_computed_bands() -> None:
    t = opened()  # computed 95 / 105
    t.on_status(et(MON, 10, 1), band_low=99.0, band_high=101.0)
    assert t.bands == (99.0, 101.0)
    t.on_quote(et(MON, 10, 2), 101.0, 101.05)
    assert t.state_at(et(MON, 10, 2)) == SsrLuldState.LULD_LIMIT
    # The next date starts from computed bands again.
    t.on_reference(TUE, 100.0, 1)
    t.on_trade(et(TUE, 10, 0), 100.0, 100)
    assert t.bands == pytest.approx((95.0, 105.0))


# ------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: t.on_trade(et(MON, 10, 1), -1.0, 100), "trade price for XYZ"),
        (lambda t: t.on_trade(et(MON, 10, 1), math.nan, 100), "trade price for XYZ"),
        (lambda t: t.on_trade(et(MON, 10, 1), 100.0, 0), "trade size for XYZ"),
        (lambda t: t.on_quote(et(MON, 10, 1), -1.0, 100.0), "NBBO bid for XYZ"),
        (lambda t: t.on_quote(et(MON, 10, 1), 99.0, math.inf), "NBBO ask for XYZ"),
        (lambda t: t.on_status(et(MON, 10, 1), band_low=99.0), "both band_low and band_high"),
        (lambda t: t.on_status(et(MON, 10, 1), band_low=101.0, band_high=99.0), "band_low < band_high"),
        (lambda t: t.on_status(et(MON, 10, 1), halted=1), "halted for XYZ must be bool"),
        (lambda t: t.on_reference(TUE, 10.0, 3), "tier"),
        (lambda t: t.on_trade(et(MON, 10, 1) + 0.5, 100.0, 100), "must be an int"),
    ],
)
def test_bad_input_is_rejected_with_the_value_named(call, match) -> None:
    with pytest.raises(SsrLuldInputError, match=match):
        call(opened())


def test_time_must_not_go_backwards() -> None:
    t = opened()
    with pytest.raises(OutOfOrderError, match="earlier than the latest time"):
        t.on_quote(et(MON, 9, 59), 100.0, 100.1)


def test_numpy_integer_timestamps_are_accepted() -> None:
    t = opened()
    t.on_trade(np.int64(et(MON, 10, 1)), 100.0, 100)
    assert t.state_at(np.int64(et(MON, 10, 1))) == SsrLuldState.NORMAL


def test_pickle_round_trip_mid_limit_state_continues_identically() -> None:
    t = opened()
    t.on_quote(et(MON, 10, 1), 105.0, 105.05)
    clone = pickle.loads(pickle.dumps(t))
    for tracker in (t, clone):
        assert tracker.state_at(et(MON, 10, 1, 15)) == SsrLuldState.HALTED
    assert t.drain_events() == clone.drain_events()


def test_a_snapshot_carries_no_event_log() -> None:
    # The dataflow's tracker has no observer: its pickled state does not grow with the transitions it saw.
    t = SsrLuldTracker("XYZ")
    t.on_reference(MON, 100.0, 1)
    t.on_trade(et(MON, 10, 0), 100.0, 100)
    t.on_status(et(MON, 10, 1), ssr=False)
    size = len(pickle.dumps(t))
    for i in range(1, 2_000):
        t.on_status(et(MON, 10, 1) + i, ssr=bool(i % 2))
    t.on_status(et(MON, 10, 1) + 2_000, ssr=False)
    assert len(pickle.dumps(t)) == size
