"""Tick wire format: valid round trips and every class of invalid input."""

from __future__ import annotations

import json

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import TickDecodeError
from schemas.ticks import MIN_TS_NS, Quote, Reference, Status, Trade, decode_tick, encode_tick

T0 = 1_514_903_400_123_000_000  # 2018-01-02 14:30:00.123 UTC

VALID = [
    {"kind": "trade", "symbol": "AAPL", "ts_ns": T0, "price": 158.3, "size": 100},
    {"kind": "trade", "symbol": "BRK.B", "ts_ns": T0, "price": 1.5, "size": 3, "exchange": "N", "conditions": "F I"},
    {"kind": "quote", "symbol": "AAPL", "ts_ns": T0, "bid": 158.29, "bid_size": 300, "ask": 158.31, "ask_size": 0},
    {"kind": "reference", "symbol": "AAPL", "ts_ns": T0, "prev_close": 157.92, "tier": 1},
    {"kind": "reference", "symbol": "XXX", "ts_ns": T0, "prev_close": 2.5, "tier": 2, "date": "2018-01-02"},
    {"kind": "status", "symbol": "AAPL", "ts_ns": T0, "halted": True},
    {"kind": "status", "symbol": "AAPL", "ts_ns": T0, "ssr": True, "band_low": 150.0, "band_high": 166.0},
]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m["kind"])
def test_valid_round_trip(msg):
    tick = decode_tick(json.dumps(msg).encode())
    assert tick.kind == msg["kind"]
    assert decode_tick(encode_tick(tick)) == tick
    for key, value in msg.items():
        got = getattr(tick, key)
        assert (str(got) if key == "date" else got) == value


INVALID = {
    "invalid_json": (b"{not json", "invalid_json"),
    "empty": (b"", "invalid_json"),
    "unknown kind": ({"kind": "order", "symbol": "A", "ts_ns": T0}, "unknown_kind"),
    "no kind": ({"symbol": "A", "ts_ns": T0, "price": 1, "size": 1}, "unknown_kind"),
    "missing price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "size": 1}, "missing_field"),
    "missing symbol": ({"kind": "trade", "ts_ns": T0, "price": 1, "size": 1}, "missing_field"),
    "unknown field": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 1, "px": 2}, "unknown_field"),
    "zero price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 0, "size": 1}, "invalid_value"),
    "negative price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": -1, "size": 1}, "invalid_value"),
    "NaN price": (b'{"kind":"trade","symbol":"A","ts_ns":%d,"price":NaN,"size":1}' % T0, "invalid_value"),
    "inf price": (b'{"kind":"trade","symbol":"A","ts_ns":%d,"price":1e999,"size":1}' % T0, "invalid_value"),
    "string price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": "abc", "size": 1}, "invalid_value"),
    "negative size": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": -5}, "invalid_value"),
    "zero trade size": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 0}, "invalid_value"),
    "negative bid size": (
        {"kind": "quote", "symbol": "A", "ts_ns": T0, "bid": 1, "bid_size": -1, "ask": 2, "ask_size": 1},
        "invalid_value",
    ),
    "ts in seconds": ({"kind": "trade", "symbol": "A", "ts_ns": T0 // 10**9, "price": 1, "size": 1}, "invalid_value"),
    "ts in ms": ({"kind": "trade", "symbol": "A", "ts_ns": T0 // 10**6, "price": 1, "size": 1}, "invalid_value"),
    "ts float": ({"kind": "trade", "symbol": "A", "ts_ns": T0 + 0.5, "price": 1, "size": 1}, "invalid_value"),
    "ts string": ({"kind": "trade", "symbol": "A", "ts_ns": str(T0), "price": 1, "size": 1}, "invalid_value"),
    "ts year 2200": ({"kind": "trade", "symbol": "A", "ts_ns": T0 * 5, "price": 1, "size": 1}, "invalid_value"),
    "empty symbol": ({"kind": "trade", "symbol": "", "ts_ns": T0, "price": 1, "size": 1}, "invalid_value"),
    "symbol with space": ({"kind": "trade", "symbol": "A B", "ts_ns": T0, "price": 1, "size": 1}, "invalid_value"),
    "tier 3": ({"kind": "reference", "symbol": "A", "ts_ns": T0, "prev_close": 1, "tier": 3}, "invalid_value"),
    "band without pair": ({"kind": "status", "symbol": "A", "ts_ns": T0, "band_low": 1.0}, "invalid_value"),
    "bands inverted": (
        {"kind": "status", "symbol": "A", "ts_ns": T0, "band_low": 2.0, "band_high": 1.0},
        "invalid_value",
    ),
    "future schema": (
        {"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 1, "schema_version": 2},
        "invalid_value",
    ),
    "array": (b"[1,2]", "invalid_value"),
}


@pytest.mark.parametrize("raw,reason", INVALID.values(), ids=INVALID.keys())
def test_invalid_is_rejected_with_reason(raw, reason):
    raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(TickDecodeError) as info:
        decode_tick(raw)
    assert info.value.reason == reason
    assert info.value.detail  # names the field and the problem


def test_crossed_quote_is_flagged_not_hidden():
    q = decode_tick(json.dumps(VALID[2] | {"bid": 10.0, "ask": 9.99}).encode())
    assert isinstance(q, Quote) and q.crossed
    assert not decode_tick(json.dumps(VALID[2]).encode()).crossed


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw):
    try:
        decode_tick(raw)
    except TickDecodeError as err:
        assert err.reason in {"invalid_json", "unknown_kind", "missing_field", "unknown_field", "invalid_value"}


@given(
    st.sampled_from(["trade", "quote"]),
    st.integers(MIN_TS_NS, MIN_TS_NS * 4),
    st.floats(min_value=1e-4, max_value=1e6),
    st.floats(min_value=1, max_value=1e7),
)
def test_generated_ticks_round_trip(kind, ts, price, size):
    tick = (
        Trade(symbol="SYM", ts_ns=ts, price=price, size=size)
        if kind == "trade"
        else Quote(symbol="SYM", ts_ns=ts, bid=price, bid_size=size, ask=price * 1.001, ask_size=size)
    )
    assert decode_tick(encode_tick(tick)) == tick


def test_models_are_immutable():
    t = Reference(symbol="A", ts_ns=T0, prev_close=1.0, tier=1)
    with pytest.raises(pydantic.ValidationError):
        t.prev_close = 2.0  # type: ignore[misc]
    assert Status(symbol="A", ts_ns=T0).halted is None
