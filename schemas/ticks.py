"""Market tick wire format: one JSON object per Kafka message, key = symbol.

Four kinds, told apart by ``kind``::

    {"kind":"trade","symbol":"AAPL","ts_ns":1514903400123000000,"price":158.3,"size":100}
    {"kind":"quote","symbol":"AAPL","ts_ns":...,"bid":158.29,"bid_size":300,"ask":158.31,"ask_size":200}
    {"kind":"reference","symbol":"AAPL","ts_ns":...,"prev_close":157.92,"tier":1}
    {"kind":"status","symbol":"AAPL","ts_ns":...,"halted":true}

Units: ``ts_ns`` integer nanoseconds since the Unix epoch, UTC; prices in USD; sizes in shares.
Validation is strict (unknown fields, missing fields, non-finite or non-positive prices, negative sizes,
implausible timestamps are rejected with a :class:`~schemas.errors.TickDecodeError`). A crossed quote
(bid > ask) is valid on the wire but flagged (:attr:`Quote.crossed`): the feature estimators drop it and the
dataflow counts it, because crossed NBBOs do occur briefly in real feeds.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from schemas.errors import TickDecodeError

TICK_SCHEMA_VERSION = 1

#: Plausible event times: 2000-01-01 .. 2100-01-01 UTC, in ns. Seconds or milliseconds since the epoch
#: (a common producer bug) fall far below the lower bound and are rejected instead of landing in 1970.
MIN_TS_NS = int(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
MAX_TS_NS = int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"must be finite, got {x!r}")
    return x


def _plausible_ts(ts: int) -> int:
    if not MIN_TS_NS <= ts < MAX_TS_NS:
        raise ValueError(
            f"{ts} is not a plausible ns epoch (expected {MIN_TS_NS}..{MAX_TS_NS}, i.e. 2000-2100 UTC in ns)"
        )
    return ts


Symbol = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_/]*$")]
TsNs = Annotated[int, Field(strict=True), AfterValidator(_plausible_ts)]
Price = Annotated[float, AfterValidator(_finite), Field(gt=0)]
Size = Annotated[float, AfterValidator(_finite), Field(ge=0)]
OptPrice = Annotated[float | None, AfterValidator(lambda x: x if x is None else _finite(x)), Field(gt=0)]


class _Tick(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = TICK_SCHEMA_VERSION
    symbol: Symbol
    ts_ns: TsNs


class Trade(_Tick):
    kind: Literal["trade"] = "trade"
    price: Price
    size: Annotated[float, AfterValidator(_finite), Field(gt=0)]
    exchange: str | None = None
    #: Sale-condition codes as the feed gives them (TAQ: space separated), kept for audit.
    conditions: str | None = None


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
    tier: Literal[1, 2]
    #: Trading date (US/Eastern) the reference applies to; default: the date of ``ts_ns`` in New York.
    date: dt.date | None = None


class Status(_Tick):
    """Feed-provided trading status. Fields left ``None`` are unknown and leave the current state as is."""

    kind: Literal["status"] = "status"
    halted: bool | None = None
    luld_pause: bool | None = None
    ssr: bool | None = None
    band_low: OptPrice = None
    band_high: OptPrice = None

    @pydantic.model_validator(mode="after")
    def _bands_ordered(self) -> Status:
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("band_low and band_high come together")
        if self.band_low is not None and self.band_high is not None and self.band_low >= self.band_high:
            raise ValueError(f"band_low {self.band_low} must be below band_high {self.band_high}")
        return self


Tick = Annotated[Trade | Quote | Reference | Status, Field(discriminator="kind")]
TICK_ADAPTER: TypeAdapter[Tick] = TypeAdapter(Tick)


def _reason(err: pydantic.ValidationError) -> str:
    """A stable short code for the first problem: metrics and dead letters group by it."""
    first = err.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return "invalid_json"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return "unknown_kind"
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    return "invalid_value"


def decode_tick(raw: bytes | str) -> Tick:
    """Parse and validate one wire message. Raises :class:`TickDecodeError` with a reason code and detail."""
    try:
        return TICK_ADAPTER.validate_json(raw)
    except pydantic.ValidationError as err:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<message>'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise TickDecodeError(_reason(err), detail) from err


def encode_tick(tick: Trade | Quote | Reference | Status) -> bytes:
    return tick.model_dump_json(exclude_none=True).encode()
