"""Per-symbol streaming feature state: the object the dataflow keeps per key and closes at every bar end.

Design (why it is fast and bounded):

- **Per tick** only O(1) Python work: a trade appends its price and size to the open bar's lists and adds its
  effective-spread term; a quote closes the time weight of the previous quote and records the mid if it moved.
  Everything else waits for the bar close.
- **Per bar** the open bar is frozen into numpy arrays and kept in a deque of the last ``lookback / bar`` bars
  (every bar, also an empty one, so the deque is exactly the trailing window). The window estimators are
  computed at the close from those per-bar arrays and per-bar partial sums: vectorised work proportional to
  the ticks in the window, i.e. amortised ``lookback / bar`` (30 by default) array element operations per
  tick in C, no Python per-tick loop. TSRV needs the window's whole price path anyway (its K-lag differences
  and its data-driven K change with every window), so no running-sum shortcut exists for it.
- **Memory**: the window's ticks, ``pattern_bars`` per-bar summaries, ``pattern_horizon_bars`` pending
  patterns and the SSR/LULD tracker's bounded state. Instances pickle (Bytewax snapshots).

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

from conditioning.features.liquidity import amihud
from conditioning.features.pattern import PATTERN_BARS, pattern_outcome, pattern_vector
from conditioning.features.realized import DEFAULT_MIN_RETURNS, realized_measures
from conditioning.features.spreads import is_valid_quote, mid_quote_volatility
from conditioning.features.ssr_luld import SsrLuldTracker
from conditioning.features.types import PATTERN_DIM, Pattern, SsrLuldState
from conditioning.features.volume_profile import volume_at_price


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
    """

    bar_ns: int = 60_000_000_000
    lookback_ns: int = 1_800_000_000_000
    tsrv_k: int | None = None
    pattern_bars: int = PATTERN_BARS
    pattern_horizon_bars: int = 5
    min_returns: int = DEFAULT_MIN_RETURNS
    quote_stale_ns: int = 300_000_000_000

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


class _Bar(NamedTuple):
    """A closed bar: arrays of its ticks and its partial sums."""

    start_ns: int
    prices: np.ndarray  # [n_trades] USD
    sizes: np.ndarray  # [n_trades] shares
    log_mids: np.ndarray  # [n_mid_changes]
    n_quotes: int
    n_invalid_quotes: int
    dollar_volume: float
    eff_num: float
    eff_volume: float
    quoted_rel_time: float
    quoted_time: int
    end_log_mid: float  # log mid of the fresh valid quote at the bar end, else NaN


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
        self._ssr = SsrLuldTracker(symbol)
        self._bar: _OpenBar | None = None
        self._bar_end = -math.inf  # first tick or close opens the first bar
        self._floor = -math.inf  # earliest admissible tick time
        # prevailing quote
        self._q_valid = False
        self._q_ts = 0
        self._q_mid = math.nan
        self._q_rel = math.nan
        self._accrued_to = 0  # time up to which the prevailing quote's weight is booked
        self._last_mid = math.nan  # last recorded mid (for change detection)
        # closed bars and per-bar history
        self._bars: deque[_Bar] = deque(maxlen=params.lookback_bars)
        self._bars_closed = 0
        self._log_price = math.nan  # log of the last trade price seen
        n = params.pattern_bars
        self._hist_returns: deque[float] = deque([math.nan] * n, maxlen=n)
        self._hist_volumes: deque[float] = deque([0.0] * n, maxlen=n)
        self._hist_spreads: deque[float] = deque([math.nan] * n, maxlen=n)
        self._hist_trades: deque[float] = deque([0.0] * n, maxlen=n)
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
        bar.prices.append(price)
        bar.sizes.append(size)
        if self._q_valid and ts_ns - self._q_ts <= self._stale_ns:
            mid = self._q_mid
            bar.eff_num += size * abs(price - mid) / mid
            bar.eff_volume += size
        self._ssr.on_trade(ts_ns, price, size)

    def on_quote(self, ts_ns: int, bid: float, bid_size: float, ask: float, ask_size: float) -> None:
        """The NBBO after an event (USD, shares). A side that is NaN or 0 is absent (one-sided quote)."""
        for name, value in (("bid", bid), ("bid_size", bid_size), ("ask", ask), ("ask_size", ask_size)):
            if value < 0.0 or value == math.inf:
                raise ValueError(
                    f"quote for {self.symbol} at {ts_ns}: {name} must be >= 0, finite or NaN, got {value!r}"
                )
        if not self._floor <= ts_ns < self._bar_end:
            self._admit(ts_ns)
        self._floor = ts_ns
        self._accrue(ts_ns)
        bar = self._bar
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

    def on_reference(self, trading_date: date, prev_close: float, tier: int) -> None:
        """Reference data for the SSR/LULD tracker (prior close USD, LULD tier 1/2)."""
        self._ssr.on_reference(trading_date, prev_close, tier)

    def on_status(self, ts_ns: int, **status: bool | float | None) -> None:
        """Feed status (halted, luld_pause, ssr, band_low, band_high), forwarded to the SSR/LULD tracker."""
        if not self._floor <= ts_ns < self._bar_end:
            self._admit(ts_ns)
        self._floor = ts_ns
        self._ssr.on_status(ts_ns, **status)

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
                self._bar.quoted_rel_time += self._q_rel * dt
                self._bar.quoted_time += dt
                self._accrued_to = end

    # ------------------------------------------------------------------------------------------ bars

    def close_bar(self, window_end_ns: int) -> BarFeatures:
        """Close every bar ending at or before ``window_end_ns`` and return the features of the trailing window."""
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
            self._close_open_bar()
        return self._window_features(window_end_ns)

    def _close_open_bar(self) -> None:
        bar, end = self._bar, self._bar_end
        self._accrue(end)
        prices = np.array(bar.prices, dtype=np.float64)
        sizes = np.array(bar.sizes, dtype=np.float64)
        fresh = self._q_valid and end - self._q_ts <= self._stale_ns
        self._bars.append(
            _Bar(
                start_ns=bar.start_ns,
                prices=prices,
                sizes=sizes,
                log_mids=np.log(np.array(bar.mids, dtype=np.float64)),
                n_quotes=bar.n_quotes,
                n_invalid_quotes=bar.n_invalid_quotes,
                dollar_volume=float(np.dot(prices, sizes)),
                eff_num=bar.eff_num,
                eff_volume=bar.eff_volume,
                quoted_rel_time=bar.quoted_rel_time,
                quoted_time=bar.quoted_time,
                end_log_mid=math.log(self._q_mid) if fresh else math.nan,
            )
        )
        previous = self._log_price
        if prices.size:
            self._log_price = math.log(prices[-1])
        self._hist_returns.append(self._log_price - previous)
        self._hist_volumes.append(float(sizes.sum()))
        self._hist_spreads.append(bar.quoted_rel_time / bar.quoted_time if bar.quoted_time else math.nan)
        self._hist_trades.append(float(prices.size))
        self._bars_closed += 1
        self._mature_patterns(end)
        self._open_bar(end)

    def _mature_patterns(self, now_ns: int) -> None:
        horizon = self.params.pattern_horizon_bars
        while self._pending and self._pending[0].due_bar <= self._bars_closed:
            p = self._pending.popleft()
            if math.isnan(p.log_price):
                self._outcomes_undefined += 1
                continue
            horizon_returns = np.array(list(self._hist_returns)[-horizon:])
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

    def _window_features(self, end_ns: int) -> BarFeatures:
        params = self.params
        bars = self._bars  # exactly the window's bars (fewer only at the start of the stream)
        start_ns = end_ns - params.lookback_ns
        flags: list[str] = []

        prices = np.concatenate([b.prices for b in bars])
        sizes = np.concatenate([b.sizes for b in bars])
        if prices.size:
            log_prices = np.log(prices)
        else:
            log_prices = np.concatenate([b.log_mids for b in bars])
            if log_prices.size:
                flags.append("mid_quote_prices")
        realized = realized_measures(log_prices, k=params.tsrv_k, min_returns=params.min_returns)
        flags.extend(realized.flags)

        bar_returns, dollar_volumes = [], []
        last_close = math.nan
        for b in bars:
            if b.prices.size:
                close = math.log(b.prices[-1])
                base = last_close if not math.isnan(last_close) else math.log(b.prices[0])
                bar_returns.append(close - base)
                dollar_volumes.append(b.dollar_volume)
                last_close = close
        illiq = amihud(np.array(bar_returns), np.array(dollar_volumes))

        quoted_time = sum(b.quoted_time for b in bars)
        eff_volume = sum(b.eff_volume for b in bars)
        spread = np.array(
            [
                sum(b.quoted_rel_time for b in bars) / quoted_time if quoted_time else math.nan,
                2.0 * sum(b.eff_num for b in bars) / eff_volume if eff_volume else math.nan,
                mid_quote_volatility(np.array([b.end_log_mid for b in bars])),
            ]
        )
        if not quoted_time:
            flags.append("no_valid_quote")
        if any(b.n_invalid_quotes for b in bars):
            flags.append("invalid_quotes_filtered")

        profile = volume_at_price(prices, sizes)
        state = self._ssr.state_at(end_ns)
        one_hot = np.zeros(len(SsrLuldState))
        one_hot[state] = 1.0
        regime = np.concatenate([[realized.tsrv, realized.bpv, illiq], one_hot, profile, spread])  # [20]

        if self._bars_closed >= params.pattern_bars:
            vector = pattern_vector(
                np.array(self._hist_returns),
                np.array(self._hist_volumes),
                np.array(self._hist_spreads),
                np.array(self._hist_trades),
            )
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
            n_trades=int(prices.size),
            n_quotes=sum(b.n_quotes for b in bars),
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


def replay(
    features: SymbolFeatures,
    ts_ns: np.ndarray,
    is_trade: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    bid: np.ndarray,
    bid_size: np.ndarray,
    ask: np.ndarray,
    ask_size: np.ndarray,
) -> list[BarFeatures]:
    """Feed one symbol's ticks (``[N]`` arrays in event order) and close every bar from the first tick's bar
    to the last one's: what the dataflow does per key, without the dataflow (tests, benchmarks, replay)."""
    bar_ns = features.params.bar_ns
    out: list[BarFeatures] = []
    if len(ts_ns) == 0:
        return out
    next_end = int(ts_ns[0]) - int(ts_ns[0]) % bar_ns + bar_ns
    on_trade, on_quote, close_bar = features.on_trade, features.on_quote, features.close_bar
    columns = (a.tolist() for a in (ts_ns, is_trade, price, size, bid, bid_size, ask, ask_size))
    for t, trade, p, s, b, bs, a, a_s in zip(*columns, strict=True):
        while t >= next_end:
            out.append(close_bar(next_end))
            next_end += bar_ns
        if trade:
            on_trade(t, p, s)
        else:
            on_quote(t, b, bs, a, a_s)
    out.append(close_bar(next_end))
    return out
