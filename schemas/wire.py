"""The fast decoder of the tick wire format: msgspec structs that mirror the pydantic models of schemas/ticks.py.

The pydantic models stay the schema of record (the JSON schemas in schemas/json are exported from them, and
they say why a message is refused); these structs are what the pipeline decodes into and carries, because
msgspec decodes and validates a message in well under a microsecond, where pydantic takes several.
tests/schemas/test_wire.py checks that both take exactly the same messages, to the same values.

The rules are the wire contract's (schemas/ticks.py): unknown fields are errors, types are exact (``true``
and ``"101.5"`` are not prices, ``2.0`` is not a ``ts_ns``), prices are positive and finite, sizes finite and
not negative, event times plausible, and every price and size within :class:`~schemas.ticks.WireLimits`
(``pipeline.wire``, checked after the decode because it is configured). :func:`decode_batch` decodes a
consumed batch in one call; where anything in it is refused, :func:`decode_each` goes message by message,
so that each bad message gets its own reason, the one :func:`schemas.ticks.decode_tick` gives.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.errors import TickDecodeError
from schemas.ticks import (
    DEFAULT_LIMITS,
    MAX_TS_NS,
    MIN_TS_NS,
    TICK_SCHEMA_VERSION,
    Quote,
    Reference,
    Status,
    Trade,
    WireLimits,
    decode_tick,
    encode_tick,
)

#: A symbol's form (schemas/ticks.py), checked after the decode (:func:`decode_batch`: once per distinct symbol of
#: the batch) rather than as a msgspec ``pattern``, which ran Python's ``re`` on every message: more than half
#: of the decode's time (measured). ``fullmatch``, not ``$``: in Python's ``re`` ``$`` also matches before a
#: final newline (pydantic's regex engine does not).
SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_/]*")
Symbol = Annotated[str, Meta(min_length=1, max_length=32)]
TsNs = Annotated[int, Meta(ge=MIN_TS_NS, lt=MAX_TS_NS)]
#: Finite: JSON has no infinity, but a literal such as 1e999 decodes to one; ``le`` the largest double.
Price = Annotated[float, Meta(gt=0, le=1.7976931348623157e308)]
Size = Annotated[float, Meta(ge=0, le=1.7976931348623157e308)]
TradeSize = Annotated[float, Meta(gt=0, le=1.7976931348623157e308)]


class _WireTick(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    symbol: Symbol
    ts_ns: TsNs
    schema_version: Literal[1] = TICK_SCHEMA_VERSION
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None


class WireTrade(_WireTick, tag="trade", frozen=True):
    kind: ClassVar[str] = "trade"
    price: Price
    size: TradeSize
    exchange: Annotated[str, Meta(max_length=16)] | None = None
    conditions: Annotated[str, Meta(max_length=64)] | None = None


class WireQuote(_WireTick, tag="quote", frozen=True):
    kind: ClassVar[str] = "quote"
    bid: Price
    bid_size: Size
    ask: Price
    ask_size: Size

    @property
    def crossed(self) -> bool:
        return self.bid > self.ask


class WireReference(_WireTick, tag="reference", frozen=True):
    kind: ClassVar[str] = "reference"
    prev_close: Price
    tier: Literal[1, 2]
    date: dt.date | None = None


class WireStatus(_WireTick, tag="status", frozen=True):
    kind: ClassVar[str] = "status"
    halted: bool | None = None
    luld_pause: bool | None = None
    ssr: bool | None = None
    band_low: Price | None = None
    band_high: Price | None = None

    def __post_init__(self) -> None:
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("band_low and band_high come together")
        if self.band_low is not None and self.band_high is not None and self.band_low >= self.band_high:
            raise ValueError(f"band_low {self.band_low} must be below band_high {self.band_high}")


WireTick = WireTrade | WireQuote | WireReference | WireStatus
#: The pydantic model of record for each struct (tests/schemas/test_wire.py compares their fields).
MODEL_OF: dict[type[WireTick], type[Trade | Quote | Reference | Status]] = {
    WireTrade: Trade,
    WireQuote: Quote,
    WireReference: Reference,
    WireStatus: Status,
}
_DECODER = msgspec.json.Decoder(WireTick)


def within(tick: WireTick, limits: WireLimits) -> bool:
    """Every price and size of ``tick`` inside ``limits`` (``pipeline.wire``)."""
    lo, hi = limits.min_price, limits.max_price
    if isinstance(tick, WireTrade):
        return lo <= tick.price <= hi and tick.size <= limits.max_size
    if isinstance(tick, WireQuote):
        return lo <= tick.bid <= hi and lo <= tick.ask <= hi and max(tick.bid_size, tick.ask_size) <= limits.max_size
    if isinstance(tick, WireReference):
        return lo <= tick.prev_close <= hi
    return all(lo <= p <= hi for p in (tick.band_low, tick.band_high) if p is not None)


def decode_batch(raws: list[bytes], limits: WireLimits | None = DEFAULT_LIMITS) -> list[WireTick]:
    """Decode every message of a consumed batch; raises ``ValueError`` if any one is refused (then
    :func:`decode_each` tells which, and why). Each message is parsed as its own JSON document: joining them
    into one array would let a message that ends inside a string swallow the next one. ``limits`` None: the
    caller checks :func:`within` (flows/sources/kafka.py, a column at a time)."""
    ticks = list(map(_DECODER.decode, raws))
    if not all(map(SYMBOL.fullmatch, {t.symbol for t in ticks})):
        raise ValueError("a malformed symbol")
    if limits is not None and not all(within(t, limits) for t in ticks):
        raise ValueError("a tick outside pipeline.wire")
    return ticks


def decode_one(raw: bytes, limits: WireLimits = DEFAULT_LIMITS) -> WireTick:
    """One message, or :class:`TickDecodeError` with the reason and detail of the schema of record
    (:func:`schemas.ticks.decode_tick`), so a dead letter says what it always said."""
    try:
        tick = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        decode_tick(raw, limits)  # raises the TickDecodeError that explains the refusal
        raise TickDecodeError("invalid_value", str(err)) from err  # refused here only: stricter than the model
    if not SYMBOL.fullmatch(tick.symbol):
        decode_tick(raw, limits)
        raise TickDecodeError("invalid_value", f"malformed symbol {tick.symbol!r}")
    if not within(tick, limits):
        decode_tick(raw, limits)
        raise TickDecodeError("out_of_range", "a price or size outside pipeline.wire")
    return tick


def decode_each(raws: list[bytes], limits: WireLimits = DEFAULT_LIMITS) -> list[WireTick | TickDecodeError]:
    """Decode message by message: a tick, or the :class:`TickDecodeError` that refuses that message."""
    out: list[WireTick | TickDecodeError] = []
    for raw in raws:
        try:
            out.append(decode_one(raw, limits))
        except TickDecodeError as err:
            out.append(err)
    return out


def as_model(tick: WireTick) -> Trade | Quote | Reference | Status:
    """The pydantic model of a decoded tick (its values were validated when it was decoded)."""
    return MODEL_OF[type(tick)].model_construct(**msgspec.structs.asdict(tick))


def encode(tick: WireTick | Trade | Quote | Reference | Status) -> bytes:
    """The wire form of a tick, decoded or built as a model: :func:`schemas.ticks.encode_tick`'s bytes."""
    return encode_tick(tick if isinstance(tick, Trade | Quote | Reference | Status) else as_model(tick))
