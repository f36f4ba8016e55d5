"""SEC Rule 201 short-sale restriction (SSR) and Limit Up-Limit Down (LULD) state, per symbol, from ticks.

Pure Python and numpy (no Bytewax/Kafka/torch). Two layers:

* pure functions of the rules: :func:`luld_percentage`, :func:`luld_bands`, :func:`ssr_trigger_price`, on the
  session clock of :mod:`schemas.session` (the exchange calendar: holidays, early closes, DST);
* :class:`SsrLuldTracker`, an event-time state machine fed with reference data, consolidated last sales, NBBO
  quotes and feed status messages, whose :meth:`SsrLuldTracker.state_at` yields the 4-state categorical
  :class:`~schemas.layout.SsrLuldState` used in the regime feature vector.

Rules (sources: ``docs/reference.md``, "SSR and LULD"; SEC Rule 201, 17 CFR 242.201; the NMS Plan to
Address Extraordinary Market Volatility, "LULD Plan", luldplan.com):

* **SSR** is triggered by a consolidated last sale during regular hours at or below 90% of the prior close
  (a decline of exactly 10% triggers). It is in effect for the rest of that trading date and the whole next
  trading date, and re-triggers (a trigger on the carry-over day extends it by another day). "Day" means the
  US/Eastern calendar date, so the restriction also covers extended hours; expiry is at midnight ET.
* **LULD** applies in regular hours only (09:30-16:00 ET, 13:00 on an early close). Bands are
  ``reference -/+ half width`` with the percentage from :func:`luld_percentage`. The reference price is the
  arithmetic mean of the trades of the preceding 5 minutes, the first of the day (and after a pause or halt)
  the opening (reopening) trade, and it only moves when the new mean differs from the one in effect by >= 1%.
  A **limit state** holds while the NBB is at (or above) the upper band or the NBO at (or below) the lower
  band; if it is not left within 15 s a 5-minute **trading pause** follows.
* **Precedence**: HALTED > LULD_LIMIT > SSR_ACTIVE > NORMAL. SSR keeps running underneath a limit state or a
  halt (:attr:`SsrLuldTracker.ssr_in_effect`), but the categorical shows the highest state only.

Time is int nanoseconds since the Unix epoch (UTC) everywhere; prices are USD.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Literal, NamedTuple

import numpy as np

from conditioning.features.columns import Ticks
from schemas.errors import HrmcondError
from schemas.layout import SsrLuldState
from schemas.session import XNYS, SessionCalendar, SessionDay, next_trading_day, session_at, session_day

__all__ = [
    "BAND_TOLERANCE_USD",
    "LIMIT_STATE_TIMEOUT_NS",
    "LULD_REFERENCE_WINDOW_NS",
    "REFERENCE_MOVE_THRESHOLD",
    "TRADING_PAUSE_NS",
    "OutOfOrderError",
    "SsrLuldEvent",
    "SsrLuldEventKind",
    "SsrLuldInputError",
    "SsrLuldTracker",
    "luld_bands",
    "luld_percentage",
    "ssr_trigger_price",
]

_NS_PER_S = 1_000_000_000

#: Rule 201 trigger: a last sale at or below this fraction of the prior close.
SSR_TRIGGER_FRACTION = 0.9
#: Absorbs binary rounding of ``0.9 * prev_close`` (e.g. 0.9 * 33.33 is not exactly 29.997 in binary); far
#: below the smallest quoting increment ($0.0001), so no genuinely higher price can trigger.
_SSR_EPSILON_USD = 1e-9

#: A quote counts as "at the band" within half a cent. The Plan's SIP rounds bands to the penny, which we do
#: not replicate; half a cent absorbs exactly that rounding. For sub-dollar stocks quoted in $0.0001 this is
#: coarse (0.5% of a $1 stock): feed-provided bands (``on_status(band_low=..., band_high=...)``) avoid it.
BAND_TOLERANCE_USD = 0.005
#: A limit state not left within 15 s becomes a trading pause (LULD Plan, section VII.A).
LIMIT_STATE_TIMEOUT_NS = 15 * _NS_PER_S
#: Length of a LULD trading pause (the primary listing market may extend it: feed status covers that).
TRADING_PAUSE_NS = 300 * _NS_PER_S
#: The reference price averages the trades of the preceding 5 minutes, at 1-second resolution here.
LULD_REFERENCE_WINDOW_NS = 300 * _NS_PER_S
_WINDOW_S = LULD_REFERENCE_WINDOW_NS // _NS_PER_S
#: Bands move only when the new reference differs from the one in effect by at least 1% (unconfirmed, per
#: docs/reference.md: the Plan's "pro-forma reference price" rule as commonly described).
REFERENCE_MOVE_THRESHOLD = 0.01

#: The bands double in the first 15 minutes of the session and, for most stocks, in its last 25: 09:30-09:45
#: and 15:35-16:00 ET, 12:35-13:00 on an early close (docs/reference.md, LULD Plan; the early-close case is
#: marked unconfirmed there).
_OPEN_DOUBLING_NS = 15 * 60 * _NS_PER_S
_CLOSE_DOUBLING_NS = 25 * 60 * _NS_PER_S
_NEVER = 2**63  # "no deadline": later than any int64 ns timestamp

SsrLuldEventKind = Literal[
    "ssr_trigger",
    "ssr_carryover",
    "ssr_expire",
    "limit_enter",
    "limit_exit",
    "pause_start",
    "pause_end",
    "feed_status",
]


class SsrLuldInputError(HrmcondError, ValueError):
    """An argument violates the contract of this module; the message names the value and the symbol."""


class OutOfOrderError(SsrLuldInputError):
    """An event's timestamp is earlier than one already applied (the tracker needs non-decreasing time)."""


class SsrLuldEvent(NamedTuple):
    """A state transition, for an observer (``SsrLuldTracker(on_event=...)``). ``ts_ns`` is when it took effect
    (event time)."""

    ts_ns: int
    symbol: str
    kind: SsrLuldEventKind
    detail: str


# --------------------------------------------------------------------------------------------------- rules


def _check_price(name: str, value: float, symbol: str = "") -> float:
    if not (0.0 < value < math.inf):
        where = f" for {symbol}" if symbol else ""
        raise SsrLuldInputError(f"{name}{where} must be a finite price > 0 USD, got {value!r}")
    return value


def _check_ts(ts_ns: int, symbol: str = "") -> int:
    try:
        return operator.index(ts_ns)
    except TypeError:
        where = f" for {symbol}" if symbol else ""
        raise SsrLuldInputError(f"ts_ns{where} must be an int (ns since the Unix epoch), got {ts_ns!r}") from None


def _check_tier(tier: int) -> int:
    if tier not in (1, 2):
        raise SsrLuldInputError(f"LULD tier must be 1 (S&P 500, Russell 1000, some ETPs) or 2, got {tier!r}")
    return tier


def ssr_trigger_price(prev_close: float) -> float:
    """Highest last sale (USD) that triggers Rule 201: 90% of the prior close (a 10% decline triggers)."""
    return SSR_TRIGGER_FRACTION * _check_price("prev_close", prev_close)


def luld_percentage(prev_close: float, tier: int) -> tuple[float, float | None]:
    """LULD percentage parameter ``(fraction, cap_usd)`` for a prior close (USD) and tier (LULD Plan App. A).

    ========================= ====== ====== ==============================
    prior close               Tier 1 Tier 2 returned
    ========================= ====== ====== ==============================
    > $3.00                   5%     10%    ``(0.05, None)``, ``(0.10, None)``
    $0.75 - $3.00 (inclusive) 20%    20%    ``(0.20, None)``
    < $0.75                   lesser of $0.15 or 75%  ``(0.75, 0.15)``
    ========================= ====== ====== ==============================

    ``cap_usd`` is the absolute cap on the half width: the band half width is
    ``min(fraction * reference, cap_usd)``.
    """
    _check_price("prev_close", prev_close)
    _check_tier(tier)
    if prev_close > 3.0:
        return (0.05 if tier == 1 else 0.10), None
    if prev_close >= 0.75:
        return 0.20, None
    return 0.75, 0.15


def _doubled(day: SessionDay, ts_ns: int, prev_close: float, tier: int) -> bool:
    """Whether the bands are doubled at ``ts_ns`` of the session ``day`` (see :func:`luld_bands`)."""
    if ts_ns < day.open_ns + _OPEN_DOUBLING_NS:
        return True
    # Tier 2 stocks above $3.00 keep their 10% until the close.
    return ts_ns >= day.close_ns - _CLOSE_DOUBLING_NS and not (tier == 2 and prev_close > 3.0)


def _band_pair(reference: float, fraction: float, cap: float | None, doubled: bool) -> tuple[float, float]:
    scale = 2.0 if doubled else 1.0
    half = reference * fraction * scale
    if cap is not None:
        half = min(half, cap * scale)
    # A doubled 75% (150%) would put the lower band below zero, which means "no lower limit".
    return max(reference - half, 0.0), reference + half


def luld_bands(
    reference_price: float, prev_close: float, tier: int, ts_ns: int, calendar: SessionCalendar = XNYS
) -> tuple[float, float]:
    """LULD ``(lower, upper)`` price bands in USD at ``ts_ns`` (a time in the regular session of ``calendar``).

    ``band = reference -/+ min(fraction * reference, cap)`` with ``(fraction, cap)`` from
    :func:`luld_percentage` (prior close and tier). The fraction and the cap are doubled:

    * in the first 15 minutes of the session, 09:30 <= t < 09:45 ET, for every stock (opening doubling);
    * in the last 25 minutes, 15:35 <= t < 16:00 ET (12:35-13:00 on an early close), for Tier 1 and for Tier 2
      stocks with a prior close <= $3.00, but *not* for Tier 2 stocks above $3.00. This follows the Plan as
      amended in 2013 (we believe the Fifth Amendment, SEC Release 34-70530); docs/reference.md marks the
      amendment as unconfirmed, so treat this branch as unconfirmed.

    The lower band is clamped at 0. Bands are not rounded to the penny (the SIP does; see
    :data:`BAND_TOLERANCE_USD`). Raises :class:`SsrLuldInputError` outside the regular session, where LULD
    does not apply.
    """
    _check_price("reference_price", reference_price)
    fraction, cap = luld_percentage(prev_close, tier)
    ts_ns = _check_ts(ts_ns)
    day = session_at(ts_ns, calendar)
    if not day.open_ns <= ts_ns < day.close_ns:
        raise SsrLuldInputError(
            f"no LULD bands outside the regular session (09:30-16:00 ET on a trading day, 13:00 on an early close): "
            f"ts_ns={ts_ns}"
        )
    return _band_pair(reference_price, fraction, cap, _doubled(day, ts_ns, prev_close, tier))


# --------------------------------------------------------------------------------------------------- tracker


class _Reference(NamedTuple):
    prev_close: float
    tier: int


class SsrLuldTracker:
    """SSR/LULD state machine of one symbol, driven by event time (int ns, non-decreasing across all calls).

    Feed it with :meth:`on_reference` (prior close and tier per trading date; may arrive ahead of the date),
    :meth:`on_trade` (consolidated last sales, already filtered to eligible trades: the tracker sees no sale
    conditions), :meth:`on_quote` (NBBO) and :meth:`on_status` (feed-provided status). :meth:`state_at` gives
    the categorical state and applies the time-driven transitions (15 s limit timeout, pause end, session
    close, date roll) that fall due up to that time; every ``on_*`` call applies them too. Sessions, trading
    dates and closes are those of ``calendar`` (:mod:`schemas.session`: the exchange's, with the config's
    overrides).

    Documented choices:

    * **Without reference data** for the current trading date (:attr:`has_reference` is False) neither a new
      SSR trigger nor the computed LULD bands can be evaluated: the computed state is NORMAL except for an SSR
      carried over from an earlier trigger, and feed status still applies.
    * **Reference price**: the first regular-hours trade of the day (after a pause or halt: the first trade
      after it) is the opening reference; afterwards, at every trade, the mean price of the trades of the last
      300 s (1-second buckets, current second included, and never reaching back past the (re)opening) becomes
      the reference if it differs from the one in effect by >= 1%. Between trades the reference does not move:
      the SIP recomputes continuously, but without a new trade only the window's expiry can change the mean.
      Before the first trade of the day there are no bands (the Plan's prior-close fallback is not modelled).
    * **Limit state**: NBB >= upper - 0.5 cent or 0 < NBO <= lower + 0.5 cent (an NBB above the upper band
      counts too); re-evaluated on every quote and whenever the bands move. A side given as 0 or NaN is
      absent (one-sided NBBO). A quote that leaves the band strictly before 15 s ends it; at exactly 15 s the
      pause has already begun. A pause lasts exactly 5 minutes, then LULD restarts from the reopening trade.
      The session close (16:00 ET, 13:00 on an early close) ends any limit state or computed pause.
    * **Feed status overrides computed state while in effect** (``on_status``; ``None`` = no information):
      ``halted=True`` (any regulatory halt) is HALTED until ``halted=False``, across dates if need be;
      ``luld_pause=True`` is a LULD pause that only ``luld_pause=False`` or the date roll ends (the listing
      market may extend pauses), and ``luld_pause=False`` also ends a computed pause; ``ssr=True/False`` is
      the feed's Rule 201 status and replaces the computed one for the rest of that trading date (feeds
      republish it every day; the computed trigger history still drives the next day's carry-over until they
      do);
      ``band_low/band_high`` (both or neither) replace the computed bands until the session closes, a pause
      or halt starts, or the date rolls. Leaving a halt also restarts LULD from the reopening trade.

    Memory is bounded: at most 301 one-second buckets, a handful of scalars, reference data for the current
    and future dates. Instances pickle (for Bytewax state snapshots). Transitions are not kept: ``on_event``,
    if given, is called with each as it happens (tests, logs); the dataflow passes none, so a snapshot carries
    no event log.
    """

    def __init__(
        self,
        symbol: str,
        *,
        calendar: SessionCalendar = XNYS,
        on_event: Callable[[SsrLuldEvent], None] | None = None,
    ) -> None:
        if not isinstance(symbol, str) or not symbol:
            raise SsrLuldInputError(f"symbol must be a non-empty str, got {symbol!r}")
        self.symbol = symbol
        self._calendar = calendar
        self._references: dict[date, _Reference] = {}
        self._on_event = on_event
        self._last_ts = -_NEVER
        self._day: SessionDay | None = None
        self._next_deadline_ns = _NEVER
        # Reference data of the current date
        self._reference: _Reference | None = None
        self._ssr_threshold = -math.inf  # no trigger possible without reference data
        self._luld_fraction = 0.0
        self._luld_cap: float | None = None
        # SSR
        self._ssr_until: date | None = None  # last date on which the computed restriction is in effect
        self._ssr_computed_today = False
        self._ssr_triggered_today = False
        self._feed_ssr: bool | None = None
        # LULD
        self._luld_closed_today = False
        self._ref_price: float | None = None
        self._buckets: deque[list] = deque()  # [second, price sum, trade count], oldest first
        self._window_sum = 0.0
        self._window_n = 0
        self._bands_computed: tuple[float, float] | None = None
        self._bands_doubled = False
        self._feed_bands: tuple[float, float] | None = None
        self._bid = math.nan
        self._ask = math.nan
        self._limit_since_ns: int | None = None
        self._pause_end_ns: int | None = None  # _NEVER while a feed pause holds
        self._feed_halted = False

    # ------------------------------------------------------------------------------------------ public API

    @property
    def has_reference(self) -> bool:
        """Whether prior close and tier are known for the current trading date (needed for SSR and LULD)."""
        return self._reference is not None

    @property
    def ssr_in_effect(self) -> bool:
        """Whether Rule 201 is in effect now (feed override first), even when a higher state is shown."""
        return self._feed_ssr if self._feed_ssr is not None else self._ssr_computed_today

    @property
    def reference_price(self) -> float | None:
        """The computed LULD reference price in effect (USD), or None (no trade yet, paused, off-session)."""
        return self._ref_price

    @property
    def bands(self) -> tuple[float, float] | None:
        """Effective ``(lower, upper)`` LULD bands (USD) at the latest time seen: feed bands, else computed.

        None outside the regular session, during a pause or halt, and before the (re)opening trade (or, for
        computed bands, without reference data).
        """
        if self._halted() or self._day is None or not self._in_session(self._last_ts):
            return None
        return self._effective_bands(self._last_ts)

    def on_reference(self, trading_date: date, prev_close: float, tier: int) -> None:
        """Reference data for ``trading_date``: the prior regular-session close (USD) and the LULD tier (1/2).

        May arrive before the date starts (kept until then) or during it (applies from then on; a repeat for
        the same date replaces the earlier values). A date already in the past is an error.
        """
        if not isinstance(trading_date, date) or isinstance(trading_date, datetime):
            raise SsrLuldInputError(f"trading_date for {self.symbol} must be a datetime.date, got {trading_date!r}")
        reference = _Reference(_check_price("prev_close", prev_close, self.symbol), _check_tier(tier))
        if self._day is not None and trading_date < self._day.day:
            raise SsrLuldInputError(
                f"reference data for {self.symbol} on {trading_date} arrived after that date "
                f"(current trading date {self._day.day})"
            )
        self._references[trading_date] = reference
        if self._day is not None and trading_date == self._day.day:
            self._apply_reference(reference)

    def on_trade(self, ts_ns: int, price: float, size: float) -> None:
        """A consolidated last sale: ``price`` USD, ``size`` shares (> 0; not used by the rules)."""
        if not (0.0 < price < math.inf):
            _check_price("trade price", price, self.symbol)
        if not (0.0 < size < math.inf):
            raise SsrLuldInputError(f"trade size for {self.symbol} must be finite and > 0 shares, got {size!r}")
        ts_ns = self._advance(ts_ns)
        day = self._day
        assert day is not None  # the first event rolled to its date
        if not day.open_ns <= ts_ns < day.close_ns:
            return
        if not self._ssr_triggered_today and price <= self._ssr_threshold:
            self._trigger_ssr(ts_ns, price)
        if self._halted() or self._reference is None:
            return
        self._add_to_window(ts_ns, price)

    def on_ticks(self, ticks: Ticks) -> None:
        """Trades and quotes as columns (event order; NaN where a column does not apply to the row):
        exactly :meth:`on_trade` / :meth:`on_quote` of each in turn. Where no deadline falls due in the run,
        a run inside the computed bands (:meth:`_inside_bands`) is taken with a step per trade only, and one in
        which nothing but the NBBO can change (:meth:`_nbbo_only`) at once; anything else tick by tick."""
        day = self._day
        if not (
            day is not None
            and self._last_ts <= int(ticks.ts_ns[0])
            and int(ticks.ts_ns[-1]) < self._next_deadline_ns
            and (self._inside_bands(ticks) or self._nbbo_only(ticks))
        ):
            self._each(ticks)

    def _each(self, ticks: Ticks) -> None:
        columns = (ticks.ts_ns, ticks.is_trade, ticks.price, ticks.size, ticks.bid, ticks.ask)
        for t, trade, p, s, b, a in zip(*(c.tolist() for c in columns), strict=True):
            if trade:
                self.on_trade(t, p, s)
            else:
                self.on_quote(t, b, a)

    def _nbbo_only(self, ticks: Ticks) -> bool:
        """Take a run (no deadline due in it) in which no trade can trigger SSR or enter the LULD reference
        window and no quote can meet a band: only the NBBO moves, to the run's last sound quote. Returns False,
        having done nothing, where the run is not like that."""
        ts_ns, is_trade, price, bid, ask = ticks.ts_ns, ticks.is_trade, ticks.price, ticks.bid, ticks.ask
        day = self._day
        assert day is not None  # on_ticks checked it
        t_ts, t_price = ts_ns[is_trade], price[is_trade]
        in_session = (t_ts >= day.open_ns) & (t_ts < day.close_ns)
        if in_session.any() and not (
            (self._ssr_triggered_today or not (t_price[in_session] <= self._ssr_threshold).any())
            and (self._halted() or self._reference is None)
        ):
            return False
        quote = ~is_trade
        q_bid, q_ask = bid[quote], ask[quote]
        sound = ~((q_bid > q_ask) & (q_ask > 0.0))  # a crossed NBBO changes nothing (on_quote)
        no_bands = self._feed_bands is None and self._bands_computed is None
        if not (no_bands or self._halted() or self._luld_closed_today):
            q_ts = ts_ns[quote][sound]
            if ((q_ts >= day.open_ns) & (q_ts < day.close_ns)).any():
                return False
        if sound.any():
            last = int(np.flatnonzero(sound)[-1])
            self._bid, self._ask = float(q_bid[last]), float(q_ask[last])
        self._last_ts = int(ts_ns[-1])
        return True

    def _inside_bands(self, ticks: Ticks) -> bool:
        """Take a run (no deadline due in it) of the regular session, computed bands in effect and no limit
        state, the bands' doubling not changing in it: one loop over the rows, where a quote only becomes the
        NBBO the next trade sees (none meets a band) and a trade goes into the reference window. From the first
        row that breaks that (a quote at a band, a trade at the SSR trigger) or after a trade that moves the
        bands, the rest of the run goes tick by tick. Returns False, having done nothing, where
        the run is not like that."""
        ts_ns = ticks.ts_ns
        day, first, last = self._day, int(ts_ns[0]), int(ts_ns[-1])
        assert day is not None  # on_ticks checked it
        bands = self._bands_computed
        if (
            bands is None
            or self._reference is None
            or self._feed_bands is not None
            or self._limit_since_ns is not None
            or self._halted()
            or self._luld_closed_today
            or not day.open_ns <= first <= last < day.close_ns
            or self._doubled(first) != self._bands_doubled
            or any(
                first < edge <= last for edge in (day.open_ns + _OPEN_DOUBLING_NS, day.close_ns - _CLOSE_DOUBLING_NS)
            )
        ):
            return False
        at_upper, at_lower = bands[1] - BAND_TOLERANCE_USD, bands[0] + BAND_TOLERANCE_USD  # _evaluate_limit
        trigger = -math.inf if self._ssr_triggered_today else self._ssr_threshold
        ts = ts_ns.tolist()
        bid, ask = self._bid, self._ask
        columns = (ticks.is_trade.tolist(), ticks.price.tolist(), ticks.bid.tolist(), ticks.ask.tolist())
        for i, (t, trade, p, b, a) in enumerate(zip(ts, *columns, strict=True)):
            if trade:
                if p <= trigger:
                    break
                self._bid, self._ask, self._last_ts = bid, ask, t
                if self._window_add(t, p):  # _add_to_window (the doubling does not change in the run)
                    self._update_computed_bands(t)
                    self._evaluate_limit(t)
                    self._each(ticks.rows(i + 1, len(ts)))
                    return True
            elif not b > a > 0.0:  # (a crossed NBBO changes nothing: on_quote)
                if (b > 0.0 and b >= at_upper) or (0.0 < a <= at_lower):
                    break
                bid, ask = b, a
        else:
            self._bid, self._ask, self._last_ts = bid, ask, last
            return True
        # row i is not like that: the rows before it are applied, it and the rest go tick by tick
        self._bid, self._ask = bid, ask
        if i:
            self._last_ts = ts[i - 1]
        self._each(ticks.rows(i, len(ts)))
        return True

    def on_quote(self, ts_ns: int, bid: float, ask: float) -> None:
        """A national best bid and offer (USD); a side of 0 or NaN is absent, negative or inf an error."""
        if not (bid >= 0.0 and ask >= 0.0 and bid < math.inf and ask < math.inf):
            self._check_quote_side("bid", bid)
            self._check_quote_side("ask", ask)
        ts_ns = self._advance(ts_ns)
        if bid > ask > 0.0:
            # A crossed NBBO is no market (stale venue quotes, a feed glitch; 41% of the TAQ sample's
            # cross-venue updates): it neither enters nor clears a limit state, the last sound NBBO stands.
            return
        self._bid = bid
        self._ask = ask
        self._evaluate_limit(ts_ns)

    def on_status(
        self,
        ts_ns: int,
        *,
        halted: bool | None = None,
        luld_pause: bool | None = None,
        ssr: bool | None = None,
        band_low: float | None = None,
        band_high: float | None = None,
    ) -> None:
        """A feed status message (SIP / exchange): each argument given overrides the computed state.

        See the class docstring for how each override is released. ``band_low`` and ``band_high`` (USD) come
        together, ``0 <= band_low < band_high``.
        """
        if (band_low is None) != (band_high is None):
            raise SsrLuldInputError(
                f"feed bands for {self.symbol} need both band_low and band_high, got {band_low!r}, {band_high!r}"
            )
        if band_low is not None and band_high is not None and not (0.0 <= band_low < band_high < math.inf):
            raise SsrLuldInputError(
                f"feed bands for {self.symbol} must satisfy 0 <= band_low < band_high < inf, "
                f"got {band_low!r}, {band_high!r}"
            )
        for name, flag in (("halted", halted), ("luld_pause", luld_pause), ("ssr", ssr)):
            if flag is not None and not isinstance(flag, bool):
                raise SsrLuldInputError(f"feed status {name} for {self.symbol} must be bool or None, got {flag!r}")
        ts_ns = self._advance(ts_ns)
        given = {
            "halted": halted,
            "luld_pause": luld_pause,
            "ssr": ssr,
            "band_low": band_low,
            "band_high": band_high,
        }
        self._emit(ts_ns, "feed_status", " ".join(f"{k}={v}" for k, v in given.items() if v is not None))
        if ssr is not None:
            self._feed_ssr = ssr
        if halted is True and not self._feed_halted:
            self._feed_halted = True
            self._stop_luld(ts_ns, "halted by feed")
        elif halted is False:
            self._feed_halted = False
        if luld_pause is True and self._pause_end_ns != _NEVER:
            if self._pause_end_ns is None:
                self._emit(ts_ns, "pause_start", "feed")
                self._stop_luld(ts_ns, "pause by feed")
            self._pause_end_ns = _NEVER
        elif luld_pause is False and self._pause_end_ns is not None:
            self._end_pause(ts_ns, "released by feed")
        # Both or neither (checked above). Kept even while halted: a SIP may announce bands just before reopening.
        if band_low is not None and band_high is not None:
            self._feed_bands = (band_low, band_high)
            self._evaluate_limit(ts_ns)
        self._reschedule()

    def state_at(self, ts_ns: int) -> SsrLuldState:
        """The state at ``ts_ns`` (>= every time seen so far), after the transitions due by then.

        Precedence: HALTED (feed halt, feed or computed LULD pause) > LULD_LIMIT > SSR_ACTIVE > NORMAL.
        """
        self._advance(ts_ns)
        if self._halted():
            return SsrLuldState.HALTED
        if self._limit_since_ns is not None:
            return SsrLuldState.LULD_LIMIT
        if self.ssr_in_effect:
            return SsrLuldState.SSR_ACTIVE
        return SsrLuldState.NORMAL

    # ------------------------------------------------------------------------------------------ time

    def _advance(self, ts_ns: int) -> int:
        """Apply every transition due by ``ts_ns``; return it as an int (numpy integers are accepted)."""
        if ts_ns.__class__ is not int:
            ts_ns = _check_ts(ts_ns, self.symbol)
        if ts_ns < self._last_ts:
            raise OutOfOrderError(
                f"{self.symbol}: ts_ns={ts_ns} is earlier than the latest time applied ({self._last_ts})"
            )
        if self._day is None:
            self._last_ts = ts_ns
            self._roll(ts_ns)
        while ts_ns >= self._next_deadline_ns:
            self._fire_deadline(ts_ns)
        self._last_ts = ts_ns
        return ts_ns

    def _reschedule(self) -> None:
        day = self._day
        assert day is not None  # the first event rolled to its date
        deadline = day.end_ns
        if not self._luld_closed_today and day.close_ns > day.open_ns:
            deadline = min(deadline, day.close_ns)
        if self._limit_since_ns is not None:
            deadline = min(deadline, self._limit_since_ns + LIMIT_STATE_TIMEOUT_NS)
        if self._pause_end_ns is not None:
            deadline = min(deadline, self._pause_end_ns)
        self._next_deadline_ns = deadline

    def _fire_deadline(self, now_ns: int) -> None:
        """Apply the earliest due time-driven transition, stamped with the time it fell due."""
        due = self._next_deadline_ns
        day = self._day
        assert day is not None  # the first event rolled to its date
        if self._limit_since_ns is not None and due == self._limit_since_ns + LIMIT_STATE_TIMEOUT_NS:
            self._limit_since_ns = None
            self._emit(due, "pause_start", "limit state not left within 15 s")
            self._stop_luld(due, "pause")
            self._pause_end_ns = due + TRADING_PAUSE_NS
        elif self._pause_end_ns is not None and due == self._pause_end_ns:
            self._end_pause(due, "5 minutes elapsed")
        elif due == day.close_ns and not self._luld_closed_today:
            self._luld_closed_today = True
            if self._pause_end_ns is not None:
                self._end_pause(due, "session close")
            self._stop_luld(due, "session close")
        else:
            self._roll(now_ns)
        self._reschedule()

    def _roll(self, now_ns: int) -> None:
        """Move to the trading date of ``now_ns``: expire or carry over SSR, reset the day's LULD state."""
        previous = self._day
        self._day = session_at(now_ns, self._calendar)
        today = self._day.day
        self._references = {d: r for d, r in self._references.items() if d >= today}
        reference = self._references.get(today)
        if reference is None:
            self._reference = None
            self._ssr_threshold = -math.inf
        else:
            self._apply_reference(reference)
        self._feed_ssr = None
        self._ssr_triggered_today = False
        was_in_effect = self._ssr_computed_today
        self._ssr_computed_today = self._ssr_until is not None and today <= self._ssr_until
        if self._ssr_computed_today:
            self._emit(self._day.start_ns, "ssr_carryover", f"in effect through {self._ssr_until}")
        elif was_in_effect and previous is not None:
            assert self._ssr_until is not None  # the computed restriction was in effect until it
            expired_at = session_day(self._ssr_until + timedelta(days=1), self._calendar).start_ns
            self._emit(expired_at, "ssr_expire", f"was in effect through {self._ssr_until}")
        if self._pause_end_ns is not None:  # only a feed pause can still hold here
            self._end_pause(self._day.start_ns, "date roll")
        self._luld_closed_today = False
        self._stop_luld(self._day.start_ns, "date roll")
        self._bid = self._ask = math.nan
        self._reschedule()

    # ------------------------------------------------------------------------------------------ SSR

    def _apply_reference(self, reference: _Reference) -> None:
        self._reference = reference
        self._ssr_threshold = ssr_trigger_price(reference.prev_close) + _SSR_EPSILON_USD
        self._luld_fraction, self._luld_cap = luld_percentage(reference.prev_close, reference.tier)
        if self._ref_price is not None:
            self._update_computed_bands(self._last_ts)

    def _trigger_ssr(self, ts_ns: int, price: float) -> None:
        assert self._day is not None and self._reference is not None  # a trigger needs the day's reference data
        today = self._day.day
        until = next_trading_day(today, self._calendar)
        retrigger = self._ssr_computed_today
        self._ssr_until = until if self._ssr_until is None else max(self._ssr_until, until)
        self._ssr_triggered_today = True
        self._ssr_computed_today = True
        self._emit(
            ts_ns,
            "ssr_trigger",
            f"{'re-trigger: ' if retrigger else ''}last sale {price} <= 90% of prior close "
            f"{self._reference.prev_close}; in effect through {self._ssr_until}",
        )

    # ------------------------------------------------------------------------------------------ LULD

    def _halted(self) -> bool:
        return self._feed_halted or self._pause_end_ns is not None

    def _in_session(self, ts_ns: int) -> bool:
        assert self._day is not None  # the first event rolled to its date
        return self._day.open_ns <= ts_ns < self._day.close_ns and not self._luld_closed_today

    def _add_to_window(self, ts_ns: int, price: float) -> None:
        if self._window_add(ts_ns, price) or self._doubled(ts_ns) != self._bands_doubled:
            self._update_computed_bands(ts_ns)
            self._evaluate_limit(ts_ns)

    def _window_add(self, ts_ns: int, price: float) -> bool:
        """Add a trade to the reference window; True when the window's mean moved the reference price (set)."""
        second = ts_ns // _NS_PER_S
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            last = buckets[-1]
            last[1] += price
            last[2] += 1
        else:
            buckets.append([second, price, 1])
        self._window_sum += price
        self._window_n += 1
        oldest_kept = second - _WINDOW_S + 1
        while buckets[0][0] < oldest_kept:
            _, dropped_sum, dropped_n = buckets.popleft()
            self._window_sum -= dropped_sum
            self._window_n -= dropped_n
        if len(buckets) == 1:  # resynchronise: running add/subtract drifts by rounding
            self._window_sum = buckets[0][1]
        mean = self._window_sum / self._window_n
        ref = self._ref_price
        if ref is None or abs(mean - ref) >= REFERENCE_MOVE_THRESHOLD * ref:
            self._ref_price = mean
            return True
        return False

    def _doubled(self, ts_ns: int) -> bool:
        assert self._day is not None and self._reference is not None  # computed bands need the day's reference
        return _doubled(self._day, ts_ns, self._reference.prev_close, self._reference.tier)

    def _update_computed_bands(self, ts_ns: int) -> None:
        assert self._ref_price is not None  # called once a (re)opening trade set it
        self._bands_doubled = self._doubled(ts_ns)
        self._bands_computed = _band_pair(self._ref_price, self._luld_fraction, self._luld_cap, self._bands_doubled)

    def _effective_bands(self, ts_ns: int) -> tuple[float, float] | None:
        if self._feed_bands is not None:
            return self._feed_bands
        if self._bands_computed is not None and self._doubled(ts_ns) != self._bands_doubled:
            self._update_computed_bands(ts_ns)  # crossed into or out of a doubling window since the last trade
        return self._bands_computed

    def _evaluate_limit(self, ts_ns: int) -> None:
        if self._feed_bands is None and self._bands_computed is None:
            return  # no band to be at (no reference data, or no trade since the open or a pause): cheapest test first
        if self._halted() or not self._in_session(ts_ns):
            return
        bands = self._effective_bands(ts_ns)
        if bands is None:
            return
        lower, upper = bands
        bid, ask = self._bid, self._ask
        # NaN compares False, so an absent side never matches.
        at_upper = bid > 0.0 and bid >= upper - BAND_TOLERANCE_USD
        at_lower = 0.0 < ask <= lower + BAND_TOLERANCE_USD
        if at_upper or at_lower:
            if self._limit_since_ns is None:
                self._limit_since_ns = ts_ns
                side = f"NBB {bid} at upper band {upper:.4f}" if at_upper else f"NBO {ask} at lower band {lower:.4f}"
                self._emit(ts_ns, "limit_enter", side)
                self._reschedule()
        elif self._limit_since_ns is not None:
            self._limit_since_ns = None
            self._emit(ts_ns, "limit_exit", f"quote left the band (NBBO {bid} x {ask})")
            self._reschedule()

    def _stop_luld(self, ts_ns: int, why: str) -> None:
        """Forget the reference window and bands: LULD restarts from the next (re)opening trade."""
        if self._limit_since_ns is not None:
            self._limit_since_ns = None
            self._emit(ts_ns, "limit_exit", why)
        self._ref_price = None
        self._buckets.clear()
        self._window_sum = 0.0
        self._window_n = 0
        self._bands_computed = None
        self._feed_bands = None

    def _end_pause(self, ts_ns: int, why: str) -> None:
        self._pause_end_ns = None
        self._emit(ts_ns, "pause_end", why)

    # ------------------------------------------------------------------------------------------ events

    def _emit(self, ts_ns: int, kind: SsrLuldEventKind, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(SsrLuldEvent(ts_ns, self.symbol, kind, detail))

    def _check_quote_side(self, name: str, value: float) -> None:
        if value < 0.0 or value == math.inf:
            raise SsrLuldInputError(
                f"NBBO {name} for {self.symbol} must be a finite price >= 0 USD (0 or NaN = no quote), got {value!r}"
            )
