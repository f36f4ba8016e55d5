"""Tick wire format: valid round trips, every class of invalid input, exact types and plausibility bounds."""

from __future__ import annotations

import datetime as dt
import json
import math

import msgspec
import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import TickDecodeError
from schemas.ticks import MIN_TS_NS, Quote, Reference, Status, Trade, WireLimits, decode_tick, encode_tick
from schemas.wire import MODEL_OF, WireQuote, as_model, decode_batch, decode_each, decode_one

T0 = 1_514_903_400_123_000_000  # 2018-01-02 14:30:00.123 UTC

VALID = [
    {"kind": "trade", "symbol": "AAPL", "ts_ns": T0, "price": 158.3, "size": 100},
    {"kind": "trade", "symbol": "BRK.B", "ts_ns": T0, "price": 1.5, "size": 3, "exchange": "N", "conditions": "F I"},
    {"kind": "trade", "symbol": "BRK.A", "ts_ns": T0, "price": 702_000.0, "size": 1},
    {"kind": "trade", "symbol": "PENNY", "ts_ns": T0, "price": 0.0001, "size": 250_000_000},
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
    (fast,) = decode_batch([json.dumps(msg).encode()])
    assert fast.kind == tick.kind and as_model(fast) == tick
    assert encode_tick(as_model(fast)) == encode_tick(tick)  # what a replay dead letter carries


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
    # exact JSON types: a boolean or a string is not a number, a number or a string not a flag
    "bool price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": True, "size": 1}, "invalid_value"),
    "numeric string price": (
        {"kind": "trade", "symbol": "A", "ts_ns": T0, "price": "101.5", "size": 1},
        "invalid_value",
    ),
    "string size": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": "100"}, "invalid_value"),
    "bool bid size": (
        {"kind": "quote", "symbol": "A", "ts_ns": T0, "bid": 1, "bid_size": True, "ask": 2, "ask_size": 1},
        "invalid_value",
    ),
    "string flag": ({"kind": "status", "symbol": "A", "ts_ns": T0, "ssr": "no"}, "invalid_value"),
    "number flag": ({"kind": "status", "symbol": "A", "ts_ns": T0, "halted": 1}, "invalid_value"),
    "bool tier": ({"kind": "reference", "symbol": "A", "ts_ns": T0, "prev_close": 1, "tier": True}, "invalid_value"),
    "float tier": ({"kind": "reference", "symbol": "A", "ts_ns": T0, "prev_close": 1, "tier": 2.0}, "invalid_value"),
    "bool schema version": (
        {"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 1, "schema_version": True},
        "invalid_value",
    ),
    "long exchange": (
        {"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 1, "exchange": "X" * 10_000},
        "invalid_value",
    ),
    # absurd magnitudes (pipeline.wire)
    "huge price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1e300, "size": 1}, "out_of_range"),
    "tiny price": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1e-300, "size": 1}, "out_of_range"),
    "huge size": ({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 1, "size": 1e12}, "out_of_range"),
    "huge ask": (
        {"kind": "quote", "symbol": "A", "ts_ns": T0, "bid": 1, "bid_size": 1, "ask": 1e30, "ask_size": 1},
        "out_of_range",
    ),
    "tiny prior close": (
        {"kind": "reference", "symbol": "A", "ts_ns": T0, "prev_close": 1e-9, "tier": 1},
        "out_of_range",
    ),
    "huge band": ({"kind": "status", "symbol": "A", "ts_ns": T0, "band_low": 1.0, "band_high": 1e300}, "out_of_range"),
}


@pytest.mark.parametrize("raw,reason", INVALID.values(), ids=INVALID.keys())
def test_invalid_is_rejected_with_reason(raw, reason):
    raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(TickDecodeError) as info:
        decode_tick(raw)
    assert info.value.reason == reason
    assert info.value.detail  # names the field and the problem


@pytest.mark.parametrize("raw,reason", INVALID.values(), ids=INVALID.keys())
def test_fast_decoder_refuses_the_same_with_the_same_reason(raw, reason):
    raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    good = json.dumps(VALID[0]).encode()
    with pytest.raises(ValueError):
        decode_batch([good, raw])  # a batch with one bad message fails as a whole...
    ok, bad = decode_each([good, raw])  # ...and message by message names it, as the schema of record does
    assert as_model(ok) == decode_tick(good)  # type: ignore[arg-type]
    assert isinstance(bad, TickDecodeError) and bad.reason == reason
    with pytest.raises(TickDecodeError) as info:
        decode_tick(raw)
    assert bad.detail == info.value.detail


def test_fast_decoder_structs_mirror_the_models():
    """Same field names, the same ones required, the same defaults: the models stay the schema of record."""
    for struct, model in MODEL_OF.items():
        fields = {f.name: f for f in msgspec.structs.fields(struct)}
        assert set(fields) | {"kind"} == set(model.model_fields), struct
        for name, f in fields.items():
            info = model.model_fields[name]
            assert info.is_required() == (f.required), (struct, name)
            if not f.required:
                assert f.default == info.default, (struct, name)
        assert struct.kind == model.model_fields["kind"].default


def test_crossed_quote_is_flagged_not_hidden():
    quote = next(m for m in VALID if m["kind"] == "quote")
    q = decode_tick(json.dumps(quote | {"bid": 10.0, "ask": 9.99}).encode())
    assert isinstance(q, Quote) and q.crossed
    assert not decode_tick(json.dumps(quote).encode()).crossed
    fast, calm = decode_batch([json.dumps(quote | {"bid": 10.0, "ask": 9.99}).encode(), json.dumps(quote).encode()])
    assert isinstance(fast, WireQuote) and fast.crossed and not calm.crossed


def test_exact_types_where_pydantic_would_coerce():
    """pydantic's default (lax) mode reads these as numbers and flags; the wire format does not (see INVALID)."""
    lax_number, lax_flag = pydantic.TypeAdapter(float), pydantic.TypeAdapter(bool)
    assert lax_number.validate_json("true") == 1.0 and lax_number.validate_json('"101.5"') == 101.5
    assert lax_flag.validate_json('"no"') is False and lax_flag.validate_json("1") is True
    for decode in (decode_tick, decode_one):
        for price in (b"true", b'"101.5"', b'"1.0"'):
            with pytest.raises(TickDecodeError, match="price"):
                decode(b'{"kind":"trade","symbol":"A","ts_ns":%d,"price":%s,"size":1}' % (T0, price))
        for flag in (b'"no"', b"1"):
            with pytest.raises(TickDecodeError, match="ssr"):
                decode(b'{"kind":"status","symbol":"A","ts_ns":%d,"ssr":%s}' % (T0, flag))


def assert_decoders_agree(raw: bytes) -> None:
    """The fast decoder (schemas/wire.py) takes exactly what the schema of record takes, to the same values."""
    try:
        model = decode_tick(raw)
    except TickDecodeError:
        model = None
    try:
        (fast,) = decode_batch([raw])
    except ValueError:
        fast = None
    assert (fast is None) == (model is None), (raw, model, fast)
    if fast is not None:
        assert as_model(fast) == model and encode_tick(as_model(fast)) == encode_tick(model), raw  # type: ignore[arg-type]


REASONS = {"invalid_json", "unknown_kind", "missing_field", "unknown_field", "invalid_value", "out_of_range"}


def is_json(raw: bytes) -> bool:
    """Whether the wire's parser reads ``raw`` as one JSON document, by independent parsers: orjson (strict JSON),
    plus the non-finite numbers (``NaN``, ``Infinity``, ``1e400``) that the wire reads and then rejects as values."""
    try:
        orjson.loads(raw)
        return True
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False

    def non_finite(v) -> bool:
        if isinstance(v, float):
            return not math.isfinite(v)
        if isinstance(v, list):
            return any(non_finite(x) for x in v)
        return isinstance(v, dict) and any(non_finite(x) for x in v.values())

    return non_finite(value)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["kind", "symbol", "ts_ns", "price", "size"]) | st.text(max_size=3), inner, max_size=4
        )
    ),
    max_leaves=8,
)


@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_crash(raw):
    assert_decoders_agree(raw)
    try:
        decode_tick(raw)
    except TickDecodeError as err:
        # Only bytes that are not JSON are reported as such: JSON of the wrong shape gets a more precise reason.
        assert err.reason in REASONS
        assert (err.reason == "invalid_json") == (not is_json(raw)), (err.reason, raw)
        assert err.detail


HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["2024-03-01", 0, -1, 1, 2, T0, 2**64, 1e300, 1e-300, 1e-4, 1e7, -0.0, "101.5", "NaN"]),
)
TEMPLATES = [VALID[0], VALID[4], VALID[6], VALID[7], VALID[8]]  # trade, quote, reference (date), status x2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEMPLATES), st.data())
def test_hostile_fields_are_rejected_with_a_reason_or_are_sound(template, data):
    """Fuzz: valid messages with some fields replaced by hostile values. Nothing but a TickDecodeError
    escapes, and what is accepted has exact types and values inside the limits."""
    names = st.sampled_from(sorted(set(template) - {"kind"}) + ["halted", "ssr", "band_low", "band_high", "seq"])
    msg = template | data.draw(st.dictionaries(names, HOSTILE, max_size=3))
    assert_decoders_agree(json.dumps(msg).encode())
    try:
        tick = decode_tick(json.dumps(msg).encode())
    except TickDecodeError as err:
        assert err.reason in REASONS and err.detail
        return
    limits = WireLimits()
    for name, value in msg.items():  # accepted as given (null: an optional field left out), never coerced
        if value is None:
            assert getattr(tick, name) is None, name
            continue
        if name in ("price", "bid", "ask", "prev_close", "band_low", "band_high"):
            assert type(value) in (int, float) and limits.min_price <= value <= limits.max_price, name
        elif name in ("size", "bid_size", "ask_size"):
            assert type(value) in (int, float) and 0 <= value <= limits.max_size, name
        elif name in ("ts_ns", "tier", "seq"):
            assert type(value) is int, name
        elif name in ("halted", "luld_pause", "ssr"):
            assert type(value) is bool, name
        assert getattr(tick, name) == (dt.date.fromisoformat(value) if name == "date" else value), name


def test_limits_are_configurable():
    msg = json.dumps({"kind": "trade", "symbol": "A", "ts_ns": T0, "price": 3e6, "size": 1}).encode()
    assert decode_tick(msg).price == 3e6  # inside the default 1e-4 .. 1e7 USD
    with pytest.raises(TickDecodeError) as info:
        decode_tick(msg, WireLimits(max_price=2e6))
    assert info.value.reason == "out_of_range" and "2000000.0" in info.value.detail
    assert decode_batch([msg])[0].price == 3e6
    with pytest.raises(ValueError):
        decode_batch([msg], WireLimits(max_price=2e6))
    with pytest.raises(TickDecodeError) as info:
        decode_one(msg, WireLimits(max_price=2e6))
    assert info.value.reason == "out_of_range" and "2000000.0" in info.value.detail
    with pytest.raises(pydantic.ValidationError, match="must be below"):
        WireLimits(min_price=10, max_price=1)


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
