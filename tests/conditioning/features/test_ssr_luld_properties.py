"""Invariants of the SSR/LULD rules and tracker, checked with hypothesis against independent oracles."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from conditioning.features.ssr_luld import (
    REFERENCE_MOVE_THRESHOLD,
    SsrLuldEvent,
    SsrLuldTracker,
    luld_bands,
)
from schemas.layout import SsrLuldState
from schemas.session import next_trading_day, regular_session

ET = ZoneInfo("America/New_York")
S = 1_000_000_000
MON = date(2024, 3, 11)
OPEN_NS = int(datetime(2024, 3, 11, 9, 30, tzinfo=ET).timestamp()) * S
SESSION_NS = 390 * 60 * S

prices = st.floats(min_value=0.01, max_value=10_000.0, allow_nan=False)
tiers = st.sampled_from([1, 2])
in_session = st.integers(min_value=OPEN_NS, max_value=OPEN_NS + SESSION_NS - 1)


@given(reference=prices, prev_close=prices, tier=tiers, ts_ns=in_session)
def test_bands_bracket_the_reference_symmetrically_unless_clamped(reference, prev_close, tier, ts_ns) -> None:
    lower, upper = luld_bands(reference, prev_close, tier, ts_ns)
    assert 0.0 <= lower < reference < upper
    if lower > 0.0:
        assert abs((upper - reference) - (reference - lower)) <= 1e-9 * reference


@given(reference=prices, prev_close=prices, tier=tiers, minute=st.integers(0, 14))
def test_opening_bands_are_twice_as_wide_as_at_midday(reference, prev_close, tier, minute) -> None:
    _, hi_open = luld_bands(reference, prev_close, tier, OPEN_NS + minute * 60 * S)
    _, hi_mid = luld_bands(reference, prev_close, tier, OPEN_NS + 180 * 60 * S)
    # LULD Plan: the percentage parameter (and the $0.15 cap) doubles 09:30-09:45 for every tier and price.
    assert abs((hi_open - reference) - 2 * (hi_mid - reference)) <= 1e-9 * reference


@given(cents=st.integers(min_value=1, max_value=1_000_000))
def test_ssr_triggers_at_exactly_90_percent_and_not_a_hundredth_of_a_cent_above(cents: int) -> None:
    prev_close = cents / 100
    exact_90 = float(Decimal(9 * cents) / Decimal(1000))  # 90% of the close, exact in decimal
    for price, triggers in ((exact_90, True), (exact_90 + 0.0001, False)):
        t = SsrLuldTracker("XYZ")
        t.on_reference(MON, prev_close, 2)
        t.on_trade(OPEN_NS + 3600 * S, price, 100)
        assert t.ssr_in_effect == triggers, (prev_close, price)


# A random day of trades (seconds after the open, price as a fraction of a prior close of 100) and quotes.
_ticks = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2 * 86_400),  # seconds after Monday's open, two days' span
        st.sampled_from(["trade", "quote", "state"]),
        st.floats(min_value=0.5, max_value=1.5, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ticks=_ticks)
def test_state_is_at_least_ssr_active_whenever_rule_201_applies(ticks) -> None:
    # Oracle: a regular-hours sale <= 90.00 after a prior close of 100 puts Rule 201 in effect until the end of the
    # next trading date (no feed status is sent here, so the computed state is the only source).
    t = SsrLuldTracker("XYZ")
    days = [MON + timedelta(days=i) for i in range(3)]
    for d in days:
        t.on_reference(d, 100.0, 1)
    ssr_until: date | None = None
    for offset_s, kind, x in sorted(ticks):
        ts_ns = OPEN_NS + offset_s * S
        today = datetime.fromtimestamp(ts_ns // S, tz=ET).date()
        if kind == "trade":
            t.on_trade(ts_ns, 100.0 * x, 100)
            if 100.0 * x <= 90.0 and regular_session(ts_ns):
                ssr_until = next_trading_day(today)
        elif kind == "quote":
            t.on_quote(ts_ns, 100.0 * x, 100.0 * x + 0.01)
        in_effect = ssr_until is not None and today <= ssr_until
        state = t.state_at(ts_ns)
        assert t.ssr_in_effect == in_effect
        if in_effect:
            assert state >= SsrLuldState.SSR_ACTIVE
        else:
            assert state != SsrLuldState.SSR_ACTIVE


def _reference_by_batch(trades: list[tuple[int, float]]) -> float:
    """The reference-price rule spelt out: at each trade, the mean of all trades in the trailing 300 one-second
    buckets; adopt it when it differs from the reference in effect by >= 1%. The first trade is the opening."""
    reference = trades[0][1]
    for i, (ts_ns, _) in enumerate(trades):
        second = ts_ns // S
        window = [p for ts, p in trades[: i + 1] if ts // S > second - 300]
        mean = sum(window) / len(window)
        if abs(mean - reference) >= REFERENCE_MOVE_THRESHOLD * reference:
            reference = mean
    return reference


@settings(max_examples=80, deadline=None)
@given(
    trades=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3_600 * S),  # ns after 10:00
            st.floats(min_value=90.0, max_value=110.0, allow_nan=False),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_streaming_reference_price_equals_the_batch_rule(trades) -> None:
    start = OPEN_NS + 30 * 60 * S
    trades = sorted((start + dt, p) for dt, p in trades)
    t = SsrLuldTracker("XYZ")
    t.on_reference(MON, 100.0, 1)
    for ts_ns, price in trades:
        t.on_trade(ts_ns, price, 100)
    assert abs(t.reference_price - _reference_by_batch(trades)) <= 1e-9 * t.reference_price


_mixed_ops = st.lists(
    st.tuples(
        st.sampled_from([0, 1, S, 7 * S, 60 * S, 600 * S, 3 * 3_600 * S]),  # ns since the previous op
        st.sampled_from(["trade", "quote", "halted", "luld_pause", "ssr", "bands"]),
        st.floats(min_value=50.0, max_value=150.0, allow_nan=False),
        st.booleans(),
    ),
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(ops=_mixed_ops)
def test_events_are_chronological_and_halts_have_no_bands(ops) -> None:
    events: list[SsrLuldEvent] = []
    t = SsrLuldTracker("XYZ", on_event=events.append)
    for i in range(3):
        t.on_reference(MON + timedelta(days=i), 100.0, 1)
    ts_ns, last_event_ns = OPEN_NS, OPEN_NS
    for gap, kind, price, flag in ops:
        ts_ns += gap
        if kind == "trade":
            t.on_trade(ts_ns, price, 100)
        elif kind == "quote":
            t.on_quote(ts_ns, price, price + 0.01)
        elif kind == "bands":
            t.on_status(ts_ns, band_low=0.95 * price, band_high=1.05 * price)
        else:
            t.on_status(ts_ns, **{kind: flag})
        state = t.state_at(ts_ns)
        if state == SsrLuldState.HALTED or not regular_session(ts_ns):
            assert t.bands is None
        new, events[:] = events[:], []
        for event in new:
            # Time-driven transitions are stamped when they fell due: never before the previous event, never
            # after the call that applied them.
            assert last_event_ns <= event.ts_ns <= ts_ns
            last_event_ns = event.ts_ns
