"""Per-symbol streaming feature state: the object the dataflow keeps per key and closes at every bar end.

Design (why it is fast and bounded):

- **Per tick** only O(1) Python work: a trade appends its price and size to the open bar's lists and adds its
  effective-spread term; a quote closes the time weight of the previous quote and records the mid if it moved.
  Everything else waits for the bar close.
- **Per bar close** the open bar's ticks are written once into preallocated FIFO buffers that hold the trailing
  window's ticks contiguously, oldest first (trade price, size and log price; log mids), and its partial sums
  into one row of a per-bar table of the last ``lookback / bar`` bars (every bar, also an empty one, so the
  table is exactly the trailing window). The bar that leaves the window is dropped by moving the buffers'
  heads: no per-close concatenation and no per-close ``log`` of the whole window.
- **Per window** the estimators run on views of those buffers: RV, BPV and TSRV on the contiguous log price
  path (TSRV needs the whole path anyway: its K-lag differences and its data-driven K change with every
  window), the volume profile on the window's prices and sizes, and every additive quantity (quote counts,
  spread integrals, effective-spread sums) as ONE numpy reduction over the per-bar table. Those window sums are
  recomputed from the per-bar sums at each close instead of being kept as running totals (add the new bar,
  subtract the evicted one): running totals drift by the rounding of every subtraction, which the 1e-9
  agreement with the batch oracle cannot afford once a window's sums shrink by orders of magnitude (an opening
  print leaving the window); summing ``lookback / bar`` (30) rows is one C loop.
- **Idle bars** (no tick, and no quote that could still accrue time weight) are cheap: a close of ``K`` such
  bars in one call (the dataflow's overnight catch-up) writes ``min(K, lookback / bar)`` empty rows and
  ``min(K, pattern_bars)`` history entries, O(min(K, lookback)) instead of K closes; once ``pattern_bars``
  idle bars have passed the pattern inputs no longer change and the last pattern vector is reused.
- **Memory**: the window's ticks (buffers sized to twice the live window and shrunk after a burst),
  ``lookback / bar`` per-bar rows, ``pattern_bars`` per-bar summaries, ``pattern_horizon_bars`` pending
  patterns and the SSR/LULD tracker's bounded state. Instances pickle (Bytewax snapshots) without the
  buffers' spare capacity.

Price series for the realized measures: log trade prices; when the window has no trade but valid quotes, the
log mid-quote, recorded at each change of the mid (size-only NBBO updates carry no price information and
would only inflate ``n``); the bar's flags then hold ``mid_quote_prices``.

Contract with the caller: ticks arrive in event-time order; ``close_bar(T)`` is called with ``T`` on the bar
grid (a multiple of ``bar_ns`` since the epoch) after every tick with ``ts < T`` and before any tick with
``ts >= T``. Skipped bar ends are closed as empty bars. Violations raise ``ValueError`` naming the value.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import numpy as np

from conditioning.features.baseline import LevelBaseline
from conditioning.features.columns import Ticks
from conditioning.features.liquidity import AMIHUD_SCALE
from conditioning.features.pattern import PATTERN_BARS, pattern_outcome, pattern_vector
from conditioning.features.realized import DEFAULT_MIN_RETURNS, RealizedMeasures, realized_measures
from conditioning.features.spreads import is_valid_quote, mid_quote_volatility
from conditioning.features.ssr_luld import SsrLuldTracker
from conditioning.features.types import Pattern
from conditioning.features.volume_profile import volume_at_price
from schemas.layout import LEVEL_FEATURES, PATTERN_DIM, SsrLuldState
from schemas.session import XNYS, SessionCalendar


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Window and estimator settings (event-time nanoseconds).

    - ``bar_ns``: bar length; features are emitted at every bar end.
    - ``lookback_ns``: trailing window of the estimators, a whole number of bars.
    - ``tsrv_k``: fixed number of TSRV subsamples, or ``None`` for the data-driven ``K = c n^(2/3)``.
    - ``pattern_bars``: bars in the pattern vector (fixed by the 128-d layout: 32 bars x 4 channels).
    - ``pattern_horizon_bars``: bars after a pattern's end at which its outcome is known.
    - ``min_returns``: fewest returns in a window for RV/BPV/TSRV (fewer: NaN and ``few_obs``).
    - ``quote_stale_ns``: a quote older than this neither accrues time weight nor prices a trade.
    - ``baseline_halflife_bars``: half-life of the per-symbol level baselines (features/baseline.py); the
      default, 1,950 one-minute bars, is five regular sessions.
    - ``calendar``: the exchange calendar the SSR/LULD rules run on (schemas/session.py).
    """

    bar_ns: int = 60_000_000_000
    lookback_ns: int = 1_800_000_000_000
    tsrv_k: int | None = None
    pattern_bars: int = PATTERN_BARS
    pattern_horizon_bars: int = 5
    min_returns: int = DEFAULT_MIN_RETURNS
    quote_stale_ns: int = 300_000_000_000
    baseline_halflife_bars: float = 1_950.0
    calendar: SessionCalendar = XNYS

    def __post_init__(self) -> None:
        if self.bar_ns <= 0:
            raise ValueError(f"bar_ns must be > 0, got {self.bar_ns}")
        if self.lookback_ns < self.bar_ns or self.lookback_ns % self.bar_ns:
            raise ValueError(f"lookback_ns must be a positive multiple of bar_ns={self.bar_ns}, got {self.lookback_ns}")
        if self.tsrv_k is not None and self.tsrv_k < 2:
            raise ValueError(f"tsrv_k must be >= 2 or None (data-driven), got {self.tsrv_k}")
        if self.pattern_bars != PATTERN_BARS:
            raise ValueError(
                f"pattern_bars is fixed at {PATTERN_BARS} by the {PATTERN_DIM}-d layout, got {self.pattern_bars}"
            )
        if self.pattern_horizon_bars < 1:
            raise ValueError(f"pattern_horizon_bars must be >= 1, got {self.pattern_horizon_bars}")
        if self.min_returns < 4:
            raise ValueError(f"min_returns must be >= 4, got {self.min_returns}")
        if self.quote_stale_ns <= 0:
            raise ValueError(f"quote_stale_ns must be > 0, got {self.quote_stale_ns}")

    @property
    def lookback_bars(self) -> int:
        return self.lookback_ns // self.bar_ns


@dataclass(slots=True)
class BarFeatures:
    """The feature record of one symbol at one bar end (window ``[window_start_ns, window_end_ns)``).

    Variances are per window in squared log-return units; ``amihud`` in |log return| per 1e6 USD per bar;
    ``spread`` in the order of ``spreads.SPREAD_FEATURE_NAMES``; ``regime_features`` is RAW (un-normalised)
    in the layout ``types.REGIME_FEATURE_NAMES``; NaN marks undefined values and ``flags`` says why.
    """

    symbol: str
    window_start_ns: int
    window_end_ns: int
    n_trades: int
    n_quotes: int
    rv: float
    tsrv: float
    bpv: float
    amihud: float
    ssr_luld_state: SsrLuldState
    volume_profile: np.ndarray  # [10] float64
    spread: np.ndarray  # [3] float64
    regime_features: np.ndarray  # [20] float64
    pattern: np.ndarray  # [128] float32
    matured: list[Pattern] = field(default_factory=list)
    flags: tuple[str, ...] = ()


class _OpenBar:
    """Accumulators of the bar being filled (plain lists and floats: the per-tick path)."""

    __slots__ = (
        "start_ns",
        "prices",
        "sizes",
        "mids",
        "n_quotes",
        "n_invalid_quotes",
        "eff_num",
        "eff_volume",
        "quoted_rel_time",
        "quoted_time",
    )

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.prices: list[float] = []
        self.sizes: list[float] = []
        self.mids: list[float] = []
        self.n_quotes = 0
        self.n_invalid_quotes = 0
        self.eff_num = 0.0  # sum size * |P - M| / M
        self.eff_volume = 0.0  # sum size over trades with a fresh valid quote
        self.quoted_rel_time = 0.0  # integral of (A - B) / M dt, ns
        self.quoted_time = 0  # ns under a fresh valid quote


class _Fifo:
    """Float64 rows in arrival order whose live part is contiguous: column ``j`` of the live rows is the view
    ``data[j, head:tail]`` (columns are stored row-major, ``data`` is ``[width, capacity]``).

    ``append`` writes after ``tail`` and ``drop`` advances ``head``. When an append does not fit, the live rows
    move to the front of a new buffer of twice the rows then needed (at least ``min_capacity``): every row is
    copied O(1) times on average, the window is always one slice (no concatenation), and the buffer shrinks
    back after a burst. Pickles only the live rows.
    """

    __slots__ = ("_data", "_head", "_tail", "_min_capacity")

    def __init__(self, width: int, min_capacity: int) -> None:
        self._data = np.empty((width, min_capacity))
        self._head = self._tail = 0
        self._min_capacity = min_capacity

    def __len__(self) -> int:
        return self._tail - self._head

    def column(self, j: int) -> np.ndarray:
        """View of column ``j`` of the live rows, oldest first (valid until the next append)."""
        return self._data[j, self._head : self._tail]

    def columns(self, lo: int, hi: int) -> np.ndarray:
        """View ``[hi - lo, len]`` of columns ``lo..hi-1`` of the live rows."""
        return self._data[lo:hi, self._head : self._tail]

    def append_row(self, row: tuple[float, ...]) -> None:
        if self._tail == self._data.shape[1]:
            self._reallocate(len(self) + 1)
        self._data[:, self._tail] = row
        self._tail += 1

    def append_block(self, k: int, *columns: list[float]) -> np.ndarray:
        """Append ``k`` rows given column by column (fewer columns than ``width``: the rest are left for the
        caller to fill); returns the view ``[width, k]`` of the new rows."""
        if self._tail + k > self._data.shape[1]:
            self._reallocate(len(self) + k)
        t = self._tail
        for j, col in enumerate(columns):
            self._data[j, t : t + k] = col
        self._tail = t + k
        return self._data[:, t : t + k]

    def oldest(self, j: int) -> float:
        """Column ``j`` of the oldest live row."""
        return float(self._data[j, self._head])

    def drop(self, k: int) -> None:
        """Forget the ``k`` oldest rows."""
        self._head += k
        if self._head == self._tail:
            self._head = self._tail = 0

    def _reallocate(self, needed: int) -> None:
        data = np.empty((self._data.shape[0], max(2 * needed, self._min_capacity)))
        n = len(self)
        data[:, :n] = self._data[:, self._head : self._tail]
        self._data, self._head, self._tail = data, 0, n

    def __getstate__(self) -> tuple[np.ndarray, int]:
        return self._data[:, self._head : self._tail].copy(), self._min_capacity

    def __setstate__(self, state: tuple[np.ndarray, int]) -> None:
        live, self._min_capacity = state
        self._data = np.empty((live.shape[0], max(2 * live.shape[1], self._min_capacity)))
        self._data[:, : live.shape[1]] = live
        self._head, self._tail = 0, live.shape[1]


class _LastRows:
    """The last ``n`` rows appended, oldest first, as one C-contiguous ``[n, width]`` view, O(width) per append:
    every row is written twice, at ``i`` and ``i + n`` of a ``[2n, width]`` buffer, so the window (rows
    ``next .. next + n - 1``) never wraps around and is read with no copy."""

    __slots__ = ("_data", "_next")

    def __init__(self, n: int, fill: tuple[float, ...]) -> None:
        self._data = np.tile(fill, (2 * n, 1))
        self._next = 0  # the slot the next row goes to, in [0, n)

    def append(self, row: tuple[float, ...]) -> None:
        i, n = self._next, self._data.shape[0] // 2
        self._data[i::n] = row  # rows i and i + n
        self._next = (i + 1) % n

    def view(self) -> np.ndarray:
        return self._data[self._next : self._next + self._data.shape[0] // 2]


# Columns of the trade buffer (one row per trade of the window).
_PRICE, _SIZE, _LOG_PRICE = range(3)

# Columns of the per-bar table (one row per bar of the window). _N_QUOTES.._QUOTED_TIME are contiguous: the
# window's additive sums are one reduction over them.
(
    _N_TRADES,  # trades in the bar
    _N_MIDS,  # recorded mid changes in the bar
    _N_QUOTES,  # quotes in the bar (valid or not)
    _N_INVALID_QUOTES,  # crossed / locked / one-sided quotes
    _EFF_NUM,  # sum size * |P - M| / M over trades with a fresh valid quote
    _EFF_VOLUME,  # sum size over those trades
    _QUOTED_REL_TIME,  # integral of (A - B) / M dt under a fresh valid quote, ns
    _QUOTED_TIME,  # ns under a fresh valid quote
    _END_LOG_MID,  # log mid of the fresh valid quote at the bar end, else NaN
    _ILLIQ_PREV,  # Amihud term |r| / DV of the bar, r from the previous traded bar's last price (0 if untraded)
    _ILLIQ_OPEN,  # the same with r from the bar's own first trade (for the window's first traded bar)
) = range(11)
_BAR_WIDTH = 11
_ADDITIVE = slice(_N_QUOTES, _QUOTED_TIME + 1)
#: ``_bar_end`` before the first bar: earlier than any tick, so the first tick or close opens a bar.
_BEFORE_FIRST_BAR = -(2**63)
#: The row of a bar without ticks and without quote time: what an idle bar adds to the per-bar table.
_IDLE_ROW = (0.0,) * _END_LOG_MID + (math.nan, 0.0, 0.0)


class _PendingPattern(NamedTuple):
    start_ns: int
    end_ns: int
    vector: np.ndarray
    log_price: float
    due_bar: int  # value of SymbolFeatures._bars_closed at which the outcome is known


class SymbolFeatures:
    """Streaming features of one symbol (see the module docstring for the cost model and the contract)."""

    def __init__(self, symbol: str, params: FeatureParams | None = None) -> None:
        if not isinstance(symbol, str) or not symbol:
            raise ValueError(f"symbol must be a non-empty str, got {symbol!r}")
        self.symbol = symbol
        self.params = params = params or FeatureParams()
        self._bar_ns = params.bar_ns
        self._stale_ns = params.quote_stale_ns
        self._ssr = SsrLuldTracker(symbol, calendar=params.calendar)
        self._baseline = LevelBaseline(len(LEVEL_FEATURES), params.baseline_halflife_bars)
        self._bar: _OpenBar | None = None
        self._bar_end = _BEFORE_FIRST_BAR  # first tick or close opens the first bar
        self._floor = -math.inf  # earliest admissible tick time
        # prevailing quote
        self._q_valid = False
        self._q_ts = 0
        self._q_mid = math.nan
        self._q_rel = math.nan
        self._accrued_to = 0  # time up to which the prevailing quote's weight is booked
        self._last_mid = math.nan  # last recorded mid (for change detection)
        # the trailing window: per-bar table and the ticks of those bars (see the module docstring)
        self._bars = _Fifo(_BAR_WIDTH, 2 * params.lookback_bars)
        self._trades = _Fifo(3, 64)  # _PRICE, _SIZE, _LOG_PRICE
        self._mids = _Fifo(1, 16)  # log mid at each recorded change
        self._bars_closed = 0
        # closed bars in a row without a trade and without quote time: from pattern_bars on, the pattern
        # inputs are constant, and _idle_pattern caches the vector computed from them
        self._quiet_bars = 0
        self._last_bar_had_ticks = False  # the level baselines only learn from bars with ticks
        self._idle_pattern: np.ndarray | None = None
        self._log_price = math.nan  # log of the last trade price seen
        # pattern inputs of the last pattern_bars bars: return, volume, spread, trade count (_record_history)
        self._history = _LastRows(params.pattern_bars, (math.nan, 0.0, math.nan, 0.0))
        self._pending: deque[_PendingPattern] = deque()
        self._matured: list[Pattern] = []
        self._outcomes_undefined = 0

    # ------------------------------------------------------------------------------------------ ticks

    def on_trade(self, ts_ns: int, price: float, size: float) -> None:
        """An eligible last sale: ``price`` USD (> 0), ``size`` shares (> 0)."""
        if not (0.0 < price < math.inf and 0.0 < size < math.inf):
            raise ValueError(
                f"trade for {self.symbol} at {ts_ns}: price and size must be finite and > 0, "
                f"got price={price!r}, size={size!r}"
            )
        if not self._floor <= ts_ns < self._bar_end:
            self._admit(ts_ns)
        self._floor = ts_ns
        bar = self._bar
        assert bar is not None  # opened by the first tick or close
        bar.prices.append(price)
        bar.sizes.append(size)
        if self._q_valid and ts_ns - self._q_ts <= self._stale_ns:
            mid = self._q_mid
            bar.eff_num += size * abs(price - mid) / mid
            bar.eff_volume += size
        self._ssr.on_trade(ts_ns, price, size)

    def on_quote(self, ts_ns: int, bid: float, bid_size: float, ask: float, ask_size: float) -> None:
        """The NBBO after an event (USD, shares). A side that is NaN or 0 is absent (one-sided quote)."""
        inf = math.inf
        if not (0.0 <= bid < inf and 0.0 <= bid_size < inf and 0.0 <= ask < inf and 0.0 <= ask_size < inf):
            self._check_quote(ts_ns, bid, bid_size, ask, ask_size)
        if not self._floor <= ts_ns < self._bar_end:
            self._admit(ts_ns)
        self._floor = ts_ns
        self._accrue(ts_ns)
        bar = self._bar
        assert bar is not None  # opened by the first tick or close
        bar.n_quotes += 1
        if is_valid_quote(bid, ask):
            mid = 0.5 * (bid + ask)
            self._q_valid, self._q_ts, self._q_mid, self._q_rel = True, ts_ns, mid, (ask - bid) / mid
            self._accrued_to = ts_ns
            if mid != self._last_mid:
                bar.mids.append(mid)
                self._last_mid = mid
        else:
            self._q_valid = False
            bar.n_invalid_quotes += 1
        self._ssr.on_quote(ts_ns, bid, ask)

    def on_ticks(self, ticks: Ticks) -> bool:
        """Ticks of the open bar as columns (event order; trade rows with NaN quote columns and the
        other way round): exactly :meth:`on_trade` / :meth:`on_quote` of each in turn.

        One loop over the rows as Python floats with the state in local variables, committed at the end: on a
        bar's ~100 ticks that costs less than the ~50 numpy calls on tiny arrays a vectorised form needs, and
        it is the per-tick arithmetic itself, so every accumulator ends bit for bit where the tick-by-tick
        calls leave it. Returns False, having done nothing, unless the run lies in event-time order inside the
        open bar and holds only values those methods take (the caller then feeds the ticks one by one, which
        raises where it should).
        """
        bar = self._bar
        if bar is None or not len(ticks):
            return False
        ts = ticks.ts_ns.tolist()
        if not self._floor <= ts[0] <= ts[-1] < self._bar_end:
            return False
        inf, stale = math.inf, self._stale_ns
        q_valid, q_ts, q_mid, q_rel = self._q_valid, self._q_ts, self._q_mid, self._q_rel
        accrued_to, last_mid = self._accrued_to, self._last_mid
        eff_num, eff_volume = bar.eff_num, bar.eff_volume
        quoted_rel_time, quoted_time = bar.quoted_rel_time, bar.quoted_time
        n_quotes = n_invalid = 0
        prices: list[float] = []
        sizes: list[float] = []
        mids: list[float] = []
        floor = ts[0]
        for t, trade, p, s, b, bs, a, a_s in zip(ts, *(c.tolist() for c in ticks.arrays()[1:]), strict=True):
            if t < floor:
                return False
            floor = t
            if trade:  # on_trade
                if not (0.0 < p < inf and 0.0 < s < inf):
                    return False
                prices.append(p)
                sizes.append(s)
                if q_valid and t - q_ts <= stale:
                    eff_num += s * abs(p - q_mid) / q_mid
                    eff_volume += s
                continue
            # on_quote
            if not (0.0 <= b < inf and 0.0 <= bs < inf and 0.0 <= a < inf and 0.0 <= a_s < inf):
                return False
            if q_valid:  # _accrue
                end = min(t, q_ts + stale)
                if end > accrued_to:
                    dt = end - accrued_to
                    quoted_rel_time += q_rel * dt
                    quoted_time += dt
                    accrued_to = end
            n_quotes += 1
            if 0.0 < b < a < inf:  # is_valid_quote
                mid = 0.5 * (b + a)
                q_valid, q_ts, q_mid, q_rel = True, t, mid, (a - b) / mid
                accrued_to = t
                if mid != last_mid:
                    mids.append(mid)
                    last_mid = mid
            else:
                q_valid = False
                n_invalid += 1
        self._ssr.on_ticks(ticks)
        self._q_valid, self._q_ts, self._q_mid, self._q_rel = q_valid, q_ts, q_mid, q_rel
        self._accrued_to, self._last_mid, self._floor = accrued_to, last_mid, floor
        bar.eff_num, bar.eff_volume = eff_num, eff_volume
        bar.quoted_rel_time, bar.quoted_time = quoted_rel_time, quoted_time
        bar.n_quotes += n_quotes
        bar.n_invalid_quotes += n_invalid
        bar.prices += prices
        bar.sizes += sizes
        bar.mids += mids
        return True

    def on_reference(self, trading_date: date, prev_close: float, tier: int) -> None:
        """Reference data for the SSR/LULD tracker (prior close USD, LULD tier 1/2)."""
        self._ssr.on_reference(trading_date, prev_close, tier)

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
        """Feed status, forwarded to the SSR/LULD tracker (:meth:`SsrLuldTracker.on_status`)."""
        if not self._floor <= ts_ns < self._bar_end:
            self._admit(ts_ns)
        self._floor = ts_ns
        self._ssr.on_status(
            ts_ns, halted=halted, luld_pause=luld_pause, ssr=ssr, band_low=band_low, band_high=band_high
        )

    def _check_quote(self, ts_ns: int, bid: float, bid_size: float, ask: float, ask_size: float) -> None:
        """Slow path of the quote check (a NaN side, an absent one, gets here too and passes): name the value
        that is negative or infinite."""
        for name, value in (("bid", bid), ("bid_size", bid_size), ("ask", ask), ("ask_size", ask_size)):
            if value < 0.0 or value == math.inf:
                raise ValueError(
                    f"quote for {self.symbol} at {ts_ns}: {name} must be >= 0, finite or NaN, got {value!r}"
                )

    def _admit(self, ts_ns: int) -> None:
        """Slow path of the tick-time check: open the first bar, or explain the violation."""
        if self._bar is None:
            self._open_bar(ts_ns - ts_ns % self._bar_ns)
        elif ts_ns < self._floor:
            raise ValueError(f"tick for {self.symbol} at {ts_ns} is out of event-time order (already at {self._floor})")
        else:
            raise ValueError(
                f"tick for {self.symbol} at {ts_ns} is past the open bar's end {self._bar_end}: "
                f"call close_bar({self._bar_end}) first"
            )

    def _open_bar(self, start_ns: int) -> None:
        self._bar = _OpenBar(start_ns)
        self._bar_end = start_ns + self._bar_ns
        self._floor = start_ns

    def _accrue(self, until_ns: int) -> None:
        """Book the prevailing quote's time weight up to ``until_ns`` (never past its staleness horizon)."""
        if self._q_valid:
            end = min(until_ns, self._q_ts + self._stale_ns)
            if end > self._accrued_to:
                dt = end - self._accrued_to
                bar = self._bar
                assert bar is not None  # a valid quote came with a tick, which opened it
                bar.quoted_rel_time += self._q_rel * dt
                bar.quoted_time += dt
                self._accrued_to = end

    # ------------------------------------------------------------------------------------------ bars

    def close_bar(self, window_end_ns: int) -> BarFeatures:
        """Close every bar ending at or before ``window_end_ns`` and return the features of the trailing window.

        Costs O(min(K, lookback_bars)) for ``K`` idle bars (see the module docstring), so the dataflow's one
        call across a night or a weekend is cheap.
        """
        if window_end_ns % self._bar_ns:
            raise ValueError(
                f"close_bar({window_end_ns}) for {self.symbol} is not on the bar grid "
                f"(a multiple of bar_ns={self._bar_ns})"
            )
        if self._bar is None:
            self._open_bar(window_end_ns - self._bar_ns)
        if window_end_ns < self._bar_end:
            raise ValueError(
                f"close_bar({window_end_ns}) for {self.symbol}: bars up to {self._bar_end - self._bar_ns} "
                f"are already closed"
            )
        while self._bar_end <= window_end_ns:
            if self._pending or not self._open_bar_is_idle():
                self._close_open_bar()
                if self._last_bar_had_ticks and self._bar_end <= window_end_ns:
                    self._learn_levels()
            else:  # no pattern to mature: every remaining bar is idle, close them at once
                self._close_idle_bars((window_end_ns - self._bar_end) // self._bar_ns + 1)
        return self._window_features(window_end_ns)

    def _open_bar_is_idle(self) -> bool:
        """No tick in the open bar, and the prevailing quote (if any) went stale by the bar's start, so neither
        this bar nor any later one accrues quote time or has a fresh end-of-bar mid until the next tick."""
        bar = self._bar
        assert bar is not None  # opened by the first tick or close
        return (
            not bar.n_quotes and not bar.prices and (not self._q_valid or self._q_ts + self._stale_ns <= bar.start_ns)
        )

    def _close_open_bar(self) -> None:
        bar, end = self._bar, self._bar_end
        assert bar is not None  # opened by the first tick or close
        self._accrue(end)
        n = len(bar.prices)
        if n:
            prices, sizes, log_prices = self._trades.append_block(n, bar.prices, bar.sizes)
            np.log(prices, out=log_prices)
            volume, dollar_volume = float(sizes.sum()), float(np.dot(prices, sizes))
            close = math.log(bar.prices[-1])
            ret_prev, ret_open = close - self._log_price, close - math.log(bar.prices[0])
            illiq_prev, illiq_open = abs(ret_prev) / dollar_volume, abs(ret_open) / dollar_volume
            self._log_price = close
        else:
            volume, ret_prev, illiq_prev, illiq_open = 0.0, math.nan, 0.0, 0.0
        if bar.mids:
            mids = self._mids.append_block(len(bar.mids), bar.mids)[0]
            np.log(mids, out=mids)
        fresh = self._q_valid and end - self._q_ts <= self._stale_ns
        self._push_bar(
            (
                n,
                len(bar.mids),
                bar.n_quotes,
                bar.n_invalid_quotes,
                bar.eff_num,
                bar.eff_volume,
                bar.quoted_rel_time,
                bar.quoted_time,
                math.log(self._q_mid) if fresh else math.nan,
                illiq_prev,
                illiq_open,
            )
        )
        spread = bar.quoted_rel_time / bar.quoted_time if bar.quoted_time else math.nan
        self._record_history(ret_prev if n else self._log_price - self._log_price, volume, spread, float(n))
        self._last_bar_had_ticks = bool(n or bar.n_quotes)
        if n or bar.quoted_time:
            self._quiet_bars, self._idle_pattern = 0, None
        else:
            self._quiet_bars += 1
        self._bars_closed += 1
        self._mature_patterns(end)
        self._open_bar(end)

    def _close_idle_bars(self, k: int) -> None:
        """Close ``k`` idle bars (see :meth:`_open_bar_is_idle`) in O(min(k, lookback_bars)), with no pattern
        pending: the state ends exactly as after ``k`` calls of :meth:`_close_open_bar`."""
        for _ in range(min(k, self.params.lookback_bars)):
            self._push_bar(_IDLE_ROW)
        for _ in range(min(k, self.params.pattern_bars)):
            self._record_history(self._log_price - self._log_price, 0.0, math.nan, 0.0)
        self._quiet_bars += k
        self._last_bar_had_ticks = False
        self._bars_closed += k
        self._open_bar(self._bar_end + (k - 1) * self._bar_ns)

    def _push_bar(self, row: tuple[float, ...]) -> None:
        """Append a closed bar's row (its ticks are already in the buffers); evict the bar leaving the window."""
        bars = self._bars
        if len(bars) == self.params.lookback_bars:
            self._trades.drop(int(bars.oldest(_N_TRADES)))
            self._mids.drop(int(bars.oldest(_N_MIDS)))
            bars.drop(1)
        bars.append_row(row)

    def _record_history(self, ret: float, volume: float, spread: float, n_trades: float) -> None:
        """Per-bar inputs of the pattern vector: the close-to-close log return of the last price (0 in a bar
        without trades, NaN before the first trade), volume, time-weighted relative spread and trade count."""
        self._history.append((ret, volume, spread, n_trades))

    def _mature_patterns(self, now_ns: int) -> None:
        horizon = self.params.pattern_horizon_bars
        while self._pending and self._pending[0].due_bar <= self._bars_closed:
            p = self._pending.popleft()
            if math.isnan(p.log_price):
                self._outcomes_undefined += 1
                continue
            horizon_returns = self._history.view()[-horizon:, 0]
            self._matured.append(
                Pattern(
                    self.symbol,
                    p.start_ns,
                    p.end_ns,
                    now_ns,
                    p.vector,
                    pattern_outcome(p.log_price, self._log_price, horizon_returns),
                )
            )

    def _window_levels(self) -> tuple[RealizedMeasures, float, np.ndarray, list[str], float]:
        """The trailing window's realized measures, Amihud, the three spreads, flags and its quote count."""
        params, bars, trades = self.params, self._bars, self._trades
        flags: list[str] = []
        if len(trades):
            log_prices = trades.column(_LOG_PRICE)
        else:
            log_prices = self._mids.column(0)
            if log_prices.size:
                flags.append("mid_quote_prices")
        realized = realized_measures(log_prices, k=params.tsrv_k, min_returns=params.min_returns, jump_test=False)
        flags.extend(realized.flags)
        illiq = self._window_amihud() if len(trades) else math.nan

        n_quotes, n_invalid, eff_num, eff_volume, quoted_rel_time, quoted_time = (
            bars.columns(_ADDITIVE.start, _ADDITIVE.stop).sum(axis=1).tolist()
        )
        spread = np.array(
            [
                quoted_rel_time / quoted_time if quoted_time else math.nan,
                2.0 * eff_num / eff_volume if eff_volume else math.nan,
                mid_quote_volatility(bars.column(_END_LOG_MID)),
            ]
        )
        if not quoted_time:
            flags.append("no_valid_quote")
        if n_invalid:
            flags.append("invalid_quotes_filtered")
        return realized, illiq, spread, flags, n_quotes

    def _learn_levels(self) -> np.ndarray:
        """This window's level features relative to the symbol's baselines (features/baseline.py). Only a bar
        with ticks teaches the baselines: an idle stretch (night, halt) says nothing about the normal level.
        ``close_bar`` lets every bar with ticks teach them, also one it closes on the way to a later end, so the
        result does not depend on how the caller spaces its ``close_bar`` calls."""
        realized, illiq, spread, _, _ = self._window_levels()
        levels = [realized.tsrv, realized.bpv, illiq, *spread.tolist()]  # [6], LEVEL_FEATURES
        return self._baseline.relative(levels, update=self._last_bar_had_ticks)

    def _window_features(self, end_ns: int) -> BarFeatures:
        params = self.params
        trades = self._trades  # exactly the window's bars (fewer only at the start of the stream)
        start_ns = end_ns - params.lookback_ns
        n_trades = len(trades)
        realized, illiq, spread, flags, n_quotes = self._window_levels()

        profile = volume_at_price(trades.column(_PRICE), trades.column(_SIZE))
        state = self._ssr.state_at(end_ns)
        one_hot = np.zeros(len(SsrLuldState))
        one_hot[state] = 1.0
        levels = [realized.tsrv, realized.bpv, illiq, *spread.tolist()]  # [6], LEVEL_FEATURES
        rel = self._baseline.relative(levels, update=self._last_bar_had_ticks)  # see _learn_levels
        regime = np.concatenate([rel[:3], one_hot, profile, rel[3:]])  # [20], layout REGIME_FEATURE_NAMES

        if self._bars_closed >= params.pattern_bars:
            vector = self._pattern()
            self._pending.append(
                _PendingPattern(
                    end_ns - params.pattern_bars * params.bar_ns,
                    end_ns,
                    vector,
                    self._log_price,
                    self._bars_closed + params.pattern_horizon_bars,
                )
            )
        else:
            vector = np.zeros(PATTERN_DIM, dtype=np.float32)
            flags.append("short_history")
        if self._outcomes_undefined:
            flags.append("pattern_outcome_undefined")
            self._outcomes_undefined = 0
        matured, self._matured = self._matured, []

        return BarFeatures(
            symbol=self.symbol,
            window_start_ns=start_ns,
            window_end_ns=end_ns,
            n_trades=n_trades,
            n_quotes=int(n_quotes),
            rv=realized.rv,
            tsrv=realized.tsrv,
            bpv=realized.bpv,
            amihud=illiq,
            ssr_luld_state=state,
            volume_profile=profile,
            spread=spread,
            regime_features=regime,
            pattern=vector,
            matured=matured,
            flags=tuple(flags),
        )

    def _window_amihud(self) -> float:
        """``1e6 * mean_b |r_b| / DV_b`` over the window's traded bars (definition in ``liquidity``) from the
        per-bar terms: ``r_b`` runs from the previous traded bar's last price, except for the window's first
        traded bar, whose return runs from its own first trade (nothing before the window leaks in)."""
        bars = self._bars
        traded = bars.column(_N_TRADES).nonzero()[0]
        first = int(traded[0])
        total = float(bars.column(_ILLIQ_PREV)[first + 1 :].sum()) + float(bars.column(_ILLIQ_OPEN)[first])
        return AMIHUD_SCALE * total / traded.size

    def _pattern(self) -> np.ndarray:
        """The pattern vector of the last ``pattern_bars`` bars; after that many quiet bars in a row its inputs
        are constant (zero returns, volumes and trades, NaN spreads), so the vector is computed once per run."""
        if self._idle_pattern is not None:
            return self._idle_pattern.copy()  # records never share an array
        vector = pattern_vector(self._history.view())
        if self._quiet_bars >= self.params.pattern_bars:
            self._idle_pattern = vector
        return vector


def replay(features: SymbolFeatures, ticks: Ticks) -> list[BarFeatures]:
    """Feed one symbol's ticks (event order) and close every bar from the first tick's bar to the last one's:
    what the dataflow does per key, without the dataflow (tests, benchmarks, replay). Each bar's ticks go in
    at once (:meth:`SymbolFeatures.on_ticks`), one by one where it does not take them."""
    bar_ns = features.params.bar_ns
    out: list[BarFeatures] = []
    ts_ns = ticks.ts_ns
    if len(ts_ns) == 0:
        return out
    next_end = int(ts_ns[0]) - int(ts_ns[0]) % bar_ns + bar_ns
    cell = ts_ns // bar_ns
    cuts = [0, *(np.flatnonzero(cell[1:] != cell[:-1]) + 1).tolist(), len(ts_ns)]
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):
        while int(ts_ns[lo]) >= next_end:
            out.append(features.close_bar(next_end))
            next_end += bar_ns
        run = ticks.rows(lo, hi)
        if not features.on_ticks(run):
            feed_each(features, run)
    out.append(features.close_bar(next_end))
    return out


def feed_each(features: SymbolFeatures, ticks: Ticks) -> None:
    """:meth:`SymbolFeatures.on_trade` / :meth:`SymbolFeatures.on_quote` of each tick in turn."""
    columns = (a.tolist() for a in ticks.arrays())
    for t, trade, p, s, b, bs, a, a_s in zip(*columns, strict=True):
        if trade:
            features.on_trade(t, p, s)
        else:
            features.on_quote(t, b, bs, a, a_s)
