"""Market tick wire format: one JSON object per Kafka message, key = symbol.

Four kinds, told apart by ``kind``::

    {"kind":"trade","symbol":"AAPL","ts_ns":1514903400123000000,"price":158.3,"size":100}
    {"kind":"quote","symbol":"AAPL","ts_ns":...,"bid":158.29,"bid_size":300,"ask":158.31,"ask_size":200}
    {"kind":"reference","symbol":"AAPL","ts_ns":...,"prev_close":157.92,"tier":1}
    {"kind":"status","symbol":"AAPL","ts_ns":...,"halted":true}

Units: ``ts_ns`` integer nanoseconds since the Unix epoch, UTC; prices in USD; sizes in shares.

Validation is strict and rejects with a :class:`~schemas.errors.TickDecodeError` whose ``reason`` is a short
stable code: ``invalid_json``, ``unknown_kind``, ``missing_field``, ``unknown_field``, ``invalid_value``
(wrong JSON type, non-finite or non-positive price, negative size, implausible timestamp...) and
``out_of_range`` (outside :class:`WireLimits`). Types are exact: a number is a JSON number (``true`` and
``"101.5"`` are not prices, ``"100"`` is not a size), a flag a JSON boolean (``"no"`` and ``1`` are not
``false``/``true``), ``ts_ns``, ``tier`` and ``seq`` JSON integers. A crossed quote (bid > ask) is valid on
the wire but flagged (:attr:`Quote.crossed`): the feature estimators drop it and the dataflow counts it,
because crossed NBBOs do occur briefly in real feeds.

``seq`` (optional, any kind) is the producer's sequence number: ``(symbol, ts_ns, seq)`` identifies a tick,
so a producer gives distinct ticks of a symbol with the same ``ts_ns`` distinct ``seq`` (``hrmcond produce``
numbers each symbol's ticks 0, 1, 2, ...). The pipeline dead-letters a tick whose identity it has already
received (reason ``duplicate``), so a re-sent message counts once. Ticks without ``seq`` are never taken for
duplicates: identical trades at the same nanosecond are real (15,588 of the TAQ sample's 76,315 trades
repeat another's time, price and size).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Final, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationInfo
from pydantic_core import PydanticCustomError

from schemas.errors import TickDecodeError
from schemas.strict import Strict

TICK_SCHEMA_VERSION: Final = 1

#: Plausible event times: 2000-01-01 .. 2100-01-01 UTC, in ns. Seconds or milliseconds since the epoch
#: (a common producer bug) fall far below the lower bound and are rejected instead of landing in 1970.
MIN_TS_NS = int(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
MAX_TS_NS = int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


class WireLimits(Strict):
    """Plausibility bounds on tick values (configured as ``pipeline.wire``). A value outside them is a corrupt
    or mis-scaled message, not a market event: a trade at 1e-300 USD would trigger SSR, one at 1e300 a LULD
    halt. It is rejected with reason ``out_of_range`` before it reaches any state."""

    #: USD; applies to every price (trade, bid, ask, prior close, LULD bands). Sub-penny stocks trade near
    #: 1e-4, BRK.A near 7e5.
    min_price: float = Field(1e-4, gt=0)
    max_price: float = Field(1e7, gt=0)
    #: Shares per trade or quote side (the largest prints are ~1e8).
    max_size: float = Field(1e9, gt=0)

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> WireLimits:
        if self.min_price >= self.max_price:
            raise ValueError(f"min_price {self.min_price} must be below max_price {self.max_price}")
        return self


DEFAULT_LIMITS = WireLimits()


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"must be finite, got {x!r}")
    return x


def _limits(info: ValidationInfo) -> WireLimits:
    """The bounds this validation runs under: ``decode_tick(..., limits)`` passes them as the context; a model
    built directly (file sources, tests) gets the defaults."""
    return info.context if isinstance(info.context, WireLimits) else DEFAULT_LIMITS


def _price_in_range(x: float, info: ValidationInfo) -> float:
    lim = _limits(info)
    if not lim.min_price <= x <= lim.max_price:
        raise PydanticCustomError(
            "out_of_range",
            "price {x} USD is outside {lo}..{hi} (pipeline.wire)",
            {"x": x, "lo": lim.min_price, "hi": lim.max_price},
        )
    return x


def _size_in_range(x: float, info: ValidationInfo) -> float:
    lim = _limits(info)
    if x > lim.max_size:
        raise PydanticCustomError(
            "out_of_range", "size {x} is above {hi} (pipeline.wire.max_size)", {"x": x, "hi": lim.max_size}
        )
    return x


def _plausible_ts(ts: int) -> int:
    if not MIN_TS_NS <= ts < MAX_TS_NS:
        raise ValueError(
            f"{ts} is not a plausible ns epoch (expected {MIN_TS_NS}..{MAX_TS_NS}, i.e. 2000-2100 UTC in ns)"
        )
    return ts


def _exact_int(x: object) -> object:
    # A Literal matches by equality, so on its own it would take true for 1 and 2.0 for 2.
    if type(x) is not int:
        raise ValueError(f"must be a JSON integer, got {x!r}")
    return x


Symbol = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_/]*$")]
TsNs = Annotated[int, AfterValidator(_plausible_ts)]
Price = Annotated[float, Field(gt=0), AfterValidator(_finite), AfterValidator(_price_in_range)]
Size = Annotated[float, Field(ge=0), AfterValidator(_finite), AfterValidator(_size_in_range)]
TradeSize = Annotated[float, Field(gt=0), AfterValidator(_finite), AfterValidator(_size_in_range)]


class _Tick(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Annotated[Literal[1], BeforeValidator(_exact_int)] = TICK_SCHEMA_VERSION
    symbol: Symbol
    ts_ns: TsNs
    #: Producer sequence number (see the module docstring): ``(symbol, ts_ns, seq)`` identifies a tick.
    seq: Annotated[int, Field(ge=0, lt=2**63)] | None = None


class Trade(_Tick):
    kind: Literal["trade"] = "trade"
    price: Price
    size: TradeSize
    exchange: Annotated[str, Field(max_length=16)] | None = None
    #: Sale-condition codes as the feed gives them (TAQ: space separated), kept for audit.
    conditions: Annotated[str, Field(max_length=64)] | None = None


class Quote(_Tick):
    """Best bid and offer (NBBO live; per-venue quotes are merged by the importers)."""

    kind: Literal["quote"] = "quote"
    bid: Price
    bid_size: Size
    ask: Price
    ask_size: Size

    @property
    def crossed(self) -> bool:
        return self.bid > self.ask


class Reference(_Tick):
    """Per-symbol reference data for a trading day: prior close (SSR trigger base) and LULD tier."""

    kind: Literal["reference"] = "reference"
    prev_close: Price
    tier: Annotated[Literal[1, 2], BeforeValidator(_exact_int)]
    #: Trading date (US/Eastern) the reference applies to; default: the date of ``ts_ns`` in New York.
    date: dt.date | None = None


class Status(_Tick):
    """Feed-provided trading status. Fields left ``None`` are unknown and leave the current state as is."""

    kind: Literal["status"] = "status"
    halted: bool | None = None
    luld_pause: bool | None = None
    ssr: bool | None = None
    band_low: Price | None = None
    band_high: Price | None = None

    @pydantic.model_validator(mode="after")
    def _bands_ordered(self) -> Status:
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("band_low and band_high come together")
        if self.band_low is not None and self.band_high is not None and self.band_low >= self.band_high:
            raise ValueError(f"band_low {self.band_low} must be below band_high {self.band_high}")
        return self


Tick = Annotated[Trade | Quote | Reference | Status, Field(discriminator="kind")]
TICK_ADAPTER: TypeAdapter[Tick] = TypeAdapter(Tick)


def reason_of(err: pydantic.ValidationError) -> str:
    """A stable short code for the first problem: metrics and dead letters group by it."""
    kind = err.errors()[0]["type"]
    if kind == "out_of_range":
        return "out_of_range"
    if kind == "json_invalid":
        return "invalid_json"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return "unknown_kind"
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    return "invalid_value"


def decode_tick(raw: bytes | str, limits: WireLimits = DEFAULT_LIMITS) -> Tick:
    """Parse and validate one wire message. Raises :class:`TickDecodeError` with a reason code and detail."""
    try:
        return TICK_ADAPTER.validate_json(raw, context=limits)
    except pydantic.ValidationError as err:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<message>'}: {e['msg']}" for e in err.errors()[:5])
        raise TickDecodeError(reason_of(err), detail) from err


def encode_tick(tick: Trade | Quote | Reference | Status) -> bytes:
    return tick.model_dump_json(exclude_none=True).encode()
