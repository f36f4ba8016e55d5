"""Seeded multi-symbol US-equity market simulator: canonical ticks, reference data and a ground-truth script.

What is staged, per symbol and trading day (regular session 09:30-16:00 ET, one-second price grid; the days
are the exchange calendar's full sessions, :mod:`schemas.session`: holidays and early closes are skipped):

- five **stretches** covering the session, one of each regime in a random order and with random lengths
  (:data:`REGIMES`): ``calm`` (random walk, 1-tick spread), ``volatile`` (5x the per-second volatility,
  wider spreads, twice the activity), ``trending`` (calm volatility plus a drift of +/-2% per hour),
  ``mean_reverting`` (Ornstein-Uhlenbeck around the stretch's opening level, half-life ~40 s) and
  ``illiquid`` (a sixth of the activity, 4-10 tick spreads, smaller sizes);
- **quotes**: NBBO updates at Poisson times (``quotes_per_trade`` x the trade rate) around the latent price,
  integer-tick prices (USD 0.01, USD 0.0001 below USD 1), sizes in round lots; a quote row is emitted only when
  the NBBO changes, and every symbol quotes at 09:30:00 so that no trade precedes the first quote;
- **trades** at Poisson times against the quote prevailing just before them: at the ask (buyer-initiated) or
  the bid, or at the midpoint tick when the spread is wide; sizes mostly round lots, ~20% odd lots. So trades
  are always inside or at the spread, and trade prices show bid-ask bounce (microstructure noise);
- on the first day, symbol 0 gets an **SSR trigger**: it opens 3% below its prior close and a scripted
  sell-off (11:00-11:30 ET) drives it to 0.87 x the prior close, so a regular-hours last sale <= 0.9 x prior
  close occurs (SEC Rule 201);
- on the first day, symbol 1 gets a **LULD limit-up state and trading pause**: at 13:00 ET its NBB is put
  on the upper LULD band (computed with :func:`conditioning.features.ssr_luld.luld_bands` from the reference
  price that :class:`~conditioning.features.ssr_luld.SsrLuldTracker` derives from the symbol's own simulated
  trades, rounded to the cent) for :data:`LIMIT_STATE_S` = 20 s > 15 s, so a 5-minute pause follows, with no
  trades during the limit state and the pause; trading reopens at the end of the pause at the band.

Later days open from the previous day's last trade with an overnight gap and take it as the prior close.
Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``: equal configs give identical
output. Ticks come in time-ordered chunks (:func:`iter_simulated_ticks`; memory bounded by the chunk length
x symbols), or as one table for small runs (:func:`simulate_market`, :func:`simulate_day`).

Run ``python -m conditioning.sim.market --symbols 20 --seed 7 --out ticks.parquet --reference ref.csv``
(``--truth truth.json`` also writes the stretches and events: :func:`write_truth`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conditioning.features.ssr_luld import SsrLuldTracker, luld_bands
from schemas.canonical import CANONICAL_SCHEMA, QUOTE, TRADE, sort_ticks, write_ticks
from schemas.reference import ReferenceRow, write_reference
from schemas.session import new_york_ns, next_trading_day, session_day

NS = 1_000_000_000
SESSION_S = 23_400  # 09:30-16:00 ET
Regime = Literal["calm", "volatile", "trending", "mean_reverting", "illiquid"]
REGIMES: tuple[Regime, ...] = get_args(Regime)
_CALM, _VOLATILE, _TRENDING, _MEAN_REVERTING, _ILLIQUID = range(len(REGIMES))

#: Per-second log-price volatility of a calm stretch: ~15% a year (0.15 / sqrt(252 x 23,400)).
CALM_SIGMA = 6.2e-5
#: Opening price levels are log-normal around USD 50 (``MarketConfig.price_log_sd``), clipped to USD 5-800.
PRICE_LEVEL = 50.0
#: Per regime, in REGIMES order: volatility multiple, activity multiple, spread range in ticks (inclusive).
_SIGMA_MULT = np.array([1.0, 5.0, 1.0, 3.0, 1.0])
_ACTIVITY_MULT = np.array([1.0, 2.0, 1.0, 1.0, 1 / 6])
_SPREAD_TICKS = np.array([[1, 1], [1, 3], [1, 2], [1, 2], [4, 10]])
TREND_PER_S = 0.02 / 3_600  # +/-2% per hour
MEAN_REVERSION_PER_S = np.log(2) / 40  # OU rate: half-life 40 s
MIN_STRETCH_S = 1_800

SSR_SELLOFF = (dt.time(11, 0), dt.time(11, 30))
SSR_OPEN_GAP = 0.97  # the SSR symbol opens 3% below its prior close ...
SSR_TARGET = 0.87  # ... and the sell-off takes it to 87% of it (the trigger is at 90%)
LULD_LIMIT_AT = dt.time(13, 0)
LIMIT_STATE_S = 20  # > the Plan's 15 s, so the limit state becomes a pause
LULD_PAUSE_S = 300


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """Simulation settings. Rates are per symbol per regular session at activity multiple 1."""

    n_symbols: int = 20
    seed: int = 7
    start: dt.date = dt.date(2024, 3, 4)  # a Monday; a full session (see full_session)
    n_days: int = 1
    trades_per_day: float = 2_000.0
    quotes_per_trade: float = 2.0
    chunk_s: int = 300
    #: Stage the SSR trigger (symbol 0) and the LULD pause (symbol 1) on the first day.
    scenarios: bool = True
    #: Log-sd of the symbols' opening price levels around USD 50. At 0.1 (90% within USD 42-59) every symbol's
    #: USD 0.01 tick is a comparable share of its price. At 0.8 (the earlier default, USD 5-800) the tick was
    #: 0.2% of a USD 5 price and 0.001% of a USD 800 one, so how often one-minute returns are exactly zero, how
    #: discrete the rest are and how much bid-ask bounce adds to the measured variance were lasting traits of
    #: each symbol's price level, not of its regime: they survive every scale-free feature (the pattern's
    #: normalised returns carry them), so trained contexts could name symbols by them (docs/models.md, leakage
    #: of the trained contexts), and the forward log RV held a per-symbol level only absolute trailing variances
    #: could see. A wide spread is still the market for showing that level features identify a stock
    #: (tests/conditioning/test_leakage_pipeline.py).
    price_log_sd: float = 0.1

    def __post_init__(self) -> None:
        problems = [
            f"{name}={value!r} must be {rule}"
            for name, value, ok, rule in (
                ("n_symbols", self.n_symbols, 1 <= self.n_symbols <= 99_999, "in 1..99,999"),
                ("n_days", self.n_days, self.n_days >= 1, ">= 1"),
                ("trades_per_day", self.trades_per_day, self.trades_per_day > 0, "> 0"),
                ("quotes_per_trade", self.quotes_per_trade, self.quotes_per_trade > 0, "> 0"),
                ("price_log_sd", self.price_log_sd, self.price_log_sd >= 0, ">= 0"),
                ("chunk_s", self.chunk_s, 1 <= self.chunk_s <= SESSION_S, f"in 1..{SESSION_S} seconds"),
                ("start", self.start, full_session(self.start), "a trading day with a full session"),
            )
            if not ok
        ]
        if self.scenarios and self.n_symbols < 2:
            problems.append("scenarios need n_symbols >= 2 (symbol 0: SSR, symbol 1: LULD)")
        if problems:
            raise ValueError("MarketConfig: " + "; ".join(problems))

    def symbol(self, index: int) -> str:
        return f"SIM{index:05d}"


class Stretch(NamedTuple):
    """A staged regime stretch of one symbol: ``[start_ns, end_ns)``."""

    symbol: str
    regime: Regime
    start_ns: int
    end_ns: int


class ScriptedEvent(NamedTuple):
    """A staged SSR/LULD episode: ``[start_ns, end_ns)`` and the price level that defines it (USD).

    ``kind``: ``ssr_selloff`` (a last sale <= ``price`` = 0.9 x prior close is due inside the window),
    ``luld_limit_state`` (NBB at the upper band ``price``), ``luld_pause`` (no trades), ``reopening``
    (the reopening trade at ``price``, ``end_ns == start_ns + 1``).
    """

    symbol: str
    kind: Literal["ssr_selloff", "luld_limit_state", "luld_pause", "reopening"]
    start_ns: int
    end_ns: int
    price: float


class SimulatedChunk(NamedTuple):
    """One time slice of the simulation: its ticks (canonical, time-ordered) and what became known with it.

    ``reference`` and ``stretches`` come with the first chunk of each day (a live feed sends reference
    data before the open); ``events`` with the chunk in which each scripted episode starts.
    """

    ticks: pa.Table
    reference: list[ReferenceRow]
    stretches: list[Stretch]
    events: list[ScriptedEvent]


@dataclass(frozen=True, slots=True)
class SimulatedMarket:
    """A whole simulation in memory: ticks (canonical table), reference rows and the ground truth."""

    ticks: pa.Table
    reference: list[ReferenceRow]
    stretches: list[Stretch]
    events: list[ScriptedEvent]


def simulate_market(config: MarketConfig) -> SimulatedMarket:
    """Run the whole simulation into one table (for small runs; use :func:`iter_simulated_ticks` at scale)."""
    chunks = list(iter_simulated_ticks(config))
    return SimulatedMarket(
        ticks=pa.concat_tables([c.ticks for c in chunks]),
        reference=[r for c in chunks for r in c.reference],
        stretches=[s for c in chunks for s in c.stretches],
        events=[e for c in chunks for e in c.events],
    )


def simulate_day(n_symbols: int = 20, seed: int = 7, **settings) -> SimulatedMarket:
    """One trading day of ``n_symbols`` symbols; ``settings`` are further :class:`MarketConfig` fields."""
    return simulate_market(MarketConfig(n_symbols=n_symbols, seed=seed, **settings))


# --------------------------------------------------------------------------------------------------------
# state carried across chunks


@dataclass(slots=True)
class _Book:
    """Last emitted NBBO per symbol: integer ticks, ticks per USD, sizes in shares (-1: no quote yet)."""

    bid: np.ndarray
    ask: np.ndarray
    bid_size: np.ndarray
    ask_size: np.ndarray
    scale: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Book:
        return cls(*(np.full(n, -1, dtype=np.int64) for _ in range(5)))

    def set(self, sym, bid, ask, bid_size, ask_size, scale) -> None:
        self.bid[sym], self.ask[sym], self.bid_size[sym], self.ask_size[sym] = bid, ask, bid_size, ask_size
        self.scale[sym] = scale


@dataclass(slots=True)
class _Day:
    """Per-day plan of all symbols."""

    date: dt.date
    open_ns: int
    regime_starts: np.ndarray  # [S, 5] seconds after the open at which each stretch starts
    regimes: np.ndarray  # [S, 5] regime index of each stretch
    trend_sign: np.ndarray  # [S]
    prev_close: np.ndarray  # [S] USD
    #: symbol -> [from, until) seconds after the open without regular ticks (a scripted episode's own ticks)
    silent: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: symbol -> (from, until, drift per second) replacing the regime's drift (the scripted sell-off)
    drift_override: dict[int, tuple[int, int, float]] = field(default_factory=dict)


def iter_simulated_ticks(config: MarketConfig) -> Iterator[SimulatedChunk]:
    """Yield the simulation as time-ordered chunks of ``config.chunk_s`` seconds (all symbols together).

    Chunks are also cut at the scripted episodes' start and end times. Memory is bounded by one chunk.
    """
    rng = np.random.default_rng(config.seed)
    n = config.n_symbols
    names = np.array([config.symbol(i) for i in range(n)], dtype=object)
    tiers = np.where(rng.random(n) < 0.6, 1, 2)
    log_price = np.log(np.clip(np.exp(rng.normal(np.log(PRICE_LEVEL), config.price_log_sd, n)), 5.0, 800.0))
    prev_close = np.exp(log_price + rng.normal(0.0, 0.01, n))
    if config.scenarios:
        tiers[:2] = 1
        prev_close[0] = np.exp(log_price[0]) / SSR_OPEN_GAP
    date = config.start
    for day_index in range(config.n_days):
        prev_close = np.round(prev_close, 4)
        day = _plan_day(rng, config, date, prev_close)
        reference = [ReferenceRow(names[i], date, float(prev_close[i]), int(tiers[i])) for i in range(n)]
        book = _Book.empty(n)
        scenario = _Scenario(day, names, tiers) if config.scenarios and day_index == 0 else None
        stretches = _stretches(day, names)
        last_trade = np.exp(log_price)
        bounds = sorted({*range(0, SESSION_S, config.chunk_s), SESSION_S, *(scenario.bounds if scenario else ())})
        for k, (s0, s1) in enumerate(itertools.pairwise(bounds)):
            events = scenario.before_chunk(s0, log_price, book) if scenario else []
            ticks, last = _chunk(rng, config, day, s0, s1, log_price, book, names)
            if scenario:
                ticks = scenario.after_chunk(s0, s1, ticks)
            last_trade = np.where(np.isnan(last), last_trade, last)
            yield SimulatedChunk(ticks, reference if k == 0 else [], stretches if k == 0 else [], events)
        # The close becomes the next prior close; the next day opens from it with a ~1% overnight gap.
        prev_close = last_trade
        log_price = np.log(last_trade) + rng.normal(0.0, 0.01, n)
        date = next_trading_day(date)
        while not full_session(date):  # an early close
            date = next_trading_day(date)


class _Scenario:
    """The first day's staged episodes: SSR sell-off of symbol 0, LULD limit-up and pause of symbol 1."""

    def __init__(self, day: _Day, names: np.ndarray, tiers: np.ndarray) -> None:
        self.day, self.names, self.tier = day, names, int(tiers[1])
        self.selloff = tuple(self.seconds_after_open(t) for t in SSR_SELLOFF)
        self.limit_s = self.seconds_after_open(LULD_LIMIT_AT)
        self.pause_end_s = self.limit_s + 15 + LULD_PAUSE_S  # the pause starts when the limit state is 15 s old
        # Regular ticks of symbol 1 resume one second after the pause, behind the scripted reopening.
        self.bounds = (*self.selloff, self.limit_s, self.pause_end_s, self.pause_end_s + 1)
        day.silent[1] = (self.limit_s, self.pause_end_s + 1)
        # Symbol 0's trending stretch is exactly the sell-off; the other four regimes around it in random order.
        day.regime_starts[0] = (
            0,
            self.selloff[0] // 2,
            self.selloff[0],
            self.selloff[1],
            (self.selloff[1] + SESSION_S) // 2,
        )
        others = [r for r in day.regimes[0] if r != _TRENDING]
        day.regimes[0] = (others[0], others[1], _TRENDING, others[2], others[3])
        self.tracker = SsrLuldTracker(str(names[1]))
        self.tracker.on_reference(day.date, float(day.prev_close[1]), self.tier)
        self.scripted = CANONICAL_SCHEMA.empty_table()

    def ns(self, seconds: float) -> int:
        return self.day.open_ns + round(seconds * NS)

    def seconds_after_open(self, wall_clock: dt.time) -> int:
        return (new_york_ns(self.day.date, wall_clock) - self.day.open_ns) // NS

    def before_chunk(self, s0: int, log_price: np.ndarray, book: _Book) -> list[ScriptedEvent]:
        day = self.day
        if s0 == self.selloff[0]:
            prev_close = float(day.prev_close[0])
            rate = (np.log(SSR_TARGET * prev_close) - log_price[0]) / (self.selloff[1] - self.selloff[0])
            day.drift_override[0] = (self.selloff[0], self.selloff[1], float(rate))
            return [
                ScriptedEvent(
                    self.names[0], "ssr_selloff", self.ns(self.selloff[0]), self.ns(self.selloff[1]), 0.9 * prev_close
                )
            ]
        if s0 == self.limit_s:
            return self._stage_limit_up(log_price)
        if s0 == self.pause_end_s + 1:
            # Regular trades resume against the scripted post-reopening quote, not the pre-limit one.
            last = self.scripted.slice(self.scripted.num_rows - 1)
            bid, ask = (round(last[c][0].as_py() * 100) for c in ("bid", "ask"))
            bid_size, ask_size = (int(last[c][0].as_py()) for c in ("bid_size", "ask_size"))
            book.set(1, bid, ask, bid_size, ask_size, 100)
        return []

    def _stage_limit_up(self, log_price: np.ndarray) -> list[ScriptedEvent]:
        """NBB on the upper band (to the cent) for LIMIT_STATE_S, silence, reopening at the band."""
        t0 = self.ns(self.limit_s)
        reference = self.tracker.reference_price
        assert reference is not None  # the day's opening trade set it
        _, upper = luld_bands(reference, float(self.day.prev_close[1]), self.tier, t0)
        bid = round(upper, 2)
        name = self.names[1]
        quotes = [
            (t0 + k * NS, bid, 100.0 * (5 + k), round(bid + 0.03, 2), 200.0) for k in (0, 5, 10, LIMIT_STATE_S - 1)
        ]
        reopen_ns = self.ns(self.pause_end_s) + 1_000_000  # 1 ms after the pause ends
        rows = [
            *(
                {"ts_ns": t, "symbol": name, "kind": QUOTE, "bid": b, "bid_size": bs, "ask": a, "ask_size": az}
                for t, b, bs, a, az in quotes
            ),
            {"ts_ns": reopen_ns, "symbol": name, "kind": TRADE, "price": bid, "size": 5_000.0},
            {
                "ts_ns": reopen_ns + 1_000_000,
                "symbol": name,
                "kind": QUOTE,
                "bid": round(bid - 0.01, 2),
                "bid_size": 300.0,
                "ask": round(bid + 0.02, 2),
                "ask_size": 300.0,
            },
        ]
        self.scripted = pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA)
        log_price[1] = np.log(bid)
        pause_start = t0 + 15 * NS
        return [
            ScriptedEvent(name, "luld_limit_state", t0, pause_start, upper),
            ScriptedEvent(name, "luld_pause", pause_start, pause_start + LULD_PAUSE_S * NS, upper),
            ScriptedEvent(name, "reopening", reopen_ns, reopen_ns + 1, bid),
        ]

    def after_chunk(self, s0: int, s1: int, ticks: pa.Table) -> pa.Table:
        """Feed symbol 1's trades to the LULD tracker (until the limit) and merge the scripted ticks."""
        if s1 <= self.limit_s:
            rows = ticks.filter(pc.and_(pc.equal(ticks["symbol"], self.names[1]), pc.equal(ticks["kind"], TRADE)))
            for ts, price, size in zip(*(rows[c].to_numpy() for c in ("ts_ns", "price", "size")), strict=True):
                self.tracker.on_trade(int(ts), float(price), float(size))
        ts = self.scripted["ts_ns"]
        inside = pc.and_(pc.greater_equal(ts, self.ns(s0)), pc.less(ts, self.ns(s1)))
        if not pc.any(inside).as_py():
            return ticks
        return sort_ticks(pa.concat_tables([ticks, self.scripted.filter(inside)]))


def full_session(date: dt.date) -> bool:
    """Whether ``date`` has a full regular session (not a holiday, not an early close): the days staged here
    are all :data:`SESSION_S` long, and the LULD episode (13:00 ET) needs the afternoon."""
    day = session_day(date)
    return day.close_ns - day.open_ns == SESSION_S * NS


def _plan_day(rng: np.random.Generator, config: MarketConfig, date: dt.date, prev_close: np.ndarray) -> _Day:
    n = config.n_symbols
    free = SESSION_S - len(REGIMES) * MIN_STRETCH_S
    lengths = MIN_STRETCH_S + rng.dirichlet(np.ones(len(REGIMES)), n) * free  # [S, 5]
    starts = np.zeros((n, len(REGIMES)), dtype=np.int64)
    starts[:, 1:] = np.round(np.cumsum(lengths, axis=1)[:, :-1]).astype(np.int64)
    regimes = np.argsort(rng.random((n, len(REGIMES))), axis=1)  # a random permutation per symbol
    return _Day(
        date=date,
        open_ns=session_day(date).open_ns,
        regime_starts=starts,
        regimes=regimes,
        trend_sign=np.where(rng.random(n) < 0.5, -1.0, 1.0),
        prev_close=prev_close,
    )


def _stretches(day: _Day, symbols: Sequence[str] | np.ndarray) -> list[Stretch]:
    ends = np.column_stack([day.regime_starts[:, 1:], np.full(len(symbols), SESSION_S)])
    return [
        Stretch(symbols[i], REGIMES[day.regimes[i, j]], day.open_ns + int(s) * NS, day.open_ns + int(e) * NS)
        for i in range(len(symbols))
        for j, (s, e) in enumerate(zip(day.regime_starts[i], ends[i], strict=True))
    ]


def _stretch_at(day: _Day, seconds: np.ndarray) -> np.ndarray:
    """[S, C] index (0..4) of the stretch each symbol is in at each second after the open."""
    return (seconds[None, None, :] >= day.regime_starts[:, :, None]).sum(axis=1) - 1


def _tick_scale(price: np.ndarray) -> np.ndarray:
    """Ticks per USD: 100 (USD 0.01) at or above USD 1, 10,000 below (Reg NMS Rule 612)."""
    return np.where(price >= 1.0, 100, 10_000)


def _chunk(
    rng: np.random.Generator,
    config: MarketConfig,
    day: _Day,
    s0: int,
    s1: int,
    log_price: np.ndarray,
    book: _Book,
    names: np.ndarray,
) -> tuple[pa.Table, np.ndarray]:
    """Simulate seconds ``[s0, s1)`` after the open; update ``log_price`` and ``book`` in place.

    Returns the chunk's ticks and each symbol's last trade price in it (NaN: none).
    """
    n, width = config.n_symbols, s1 - s0
    seconds = np.arange(s0, s1)
    stretch = _stretch_at(day, seconds)  # [S, C]
    regime = np.take_along_axis(day.regimes, stretch, axis=1)
    stretch_start = np.take_along_axis(day.regime_starts, stretch, axis=1)
    sigma = CALM_SIGMA * _SIGMA_MULT[regime]
    drift = np.where(regime == _TRENDING, day.trend_sign[:, None] * TREND_PER_S, 0.0)
    for sym, (a, b, rate) in day.drift_override.items():
        drift[sym, (seconds >= a) & (seconds < b)] = rate
    reverting = regime == _MEAN_REVERTING
    shocks = rng.standard_normal((n, width)) * sigma + drift
    path = np.empty((n, width))
    anchor = log_price.copy()
    x = log_price
    for c in range(width):
        # the OU anchor is the log price at which the mean-reverting stretch began
        starting = reverting[:, c] & (stretch_start[:, c] == seconds[c])
        anchor[starting] = x[starting]
        pull = np.where(reverting[:, c], MEAN_REVERSION_PER_S * (anchor - x), 0.0)
        x = x + pull + shocks[:, c]
        path[:, c] = x
    log_price[:] = x

    activity = config.trades_per_day / SESSION_S * _ACTIVITY_MULT[regime]  # [S, C] trades per second
    silent = np.zeros((n, width), dtype=bool)
    for sym, (a, b) in day.silent.items():
        silent[sym] = (seconds >= a) & (seconds < b)
    quotes = _quotes(rng, day, s0, path, regime, activity * config.quotes_per_trade, silent)
    trades = _trades(rng, day, s0, activity, silent, quotes, book)
    quotes = _changed_quotes(quotes, book)
    last = np.full(n, np.nan)
    last[trades["sym"]] = trades["price"]  # sorted by (symbol, time): each symbol's last trade wins
    tables = [
        _canonical(names, trades["sym"], trades["ts"], TRADE, price=trades["price"], size=trades["size"]),
        _canonical(
            names,
            quotes["sym"],
            quotes["ts"],
            QUOTE,
            bid=quotes["bid"] / quotes["scale"],
            bid_size=quotes["bid_size"].astype(np.float64),
            ask=quotes["ask"] / quotes["scale"],
            ask_size=quotes["ask_size"].astype(np.float64),
        ),
    ]
    return sort_ticks(pa.concat_tables(tables)), last


def _event_times(
    rng: np.random.Generator, rate: np.ndarray, s0: int, open_ns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson events per (symbol, second) at ``rate``: (symbol, column, ts_ns), sorted by symbol then time."""
    counts = rng.poisson(rate)
    sym, col = np.nonzero(counts)
    reps = counts[sym, col]
    sym, col = np.repeat(sym, reps), np.repeat(col, reps)
    ts = open_ns + (s0 + col) * NS + (rng.random(sym.size) * NS).astype(np.int64)
    order = np.lexsort((ts, sym))
    return sym[order], col[order], ts[order]


def _quotes(
    rng: np.random.Generator,
    day: _Day,
    s0: int,
    path: np.ndarray,
    regime: np.ndarray,
    rate: np.ndarray,
    silent: np.ndarray,
) -> dict[str, np.ndarray]:
    """Candidate NBBO updates (integer ticks), sorted by (symbol, time); one at the open for every symbol."""
    rate = np.where(silent, 0.0, rate)
    sym, col, ts = _event_times(rng, rate, s0, day.open_ns)
    if s0 == 0:  # everybody quotes at 09:30:00 so that no trade precedes the first quote
        opening = np.flatnonzero(~silent[:, 0])
        sym = np.concatenate([opening, sym])
        col = np.concatenate([np.zeros(opening.size, dtype=np.int64), col])
        ts = np.concatenate([np.full(opening.size, day.open_ns), ts])
        order = np.lexsort((ts, sym))
        sym, col, ts = sym[order], col[order], ts[order]
    mid = np.exp(path[sym, col])
    scale = _tick_scale(mid)
    r = regime[sym, col]
    spread = rng.integers(_SPREAD_TICKS[r, 0], _SPREAD_TICKS[r, 1] + 1)
    bid = np.floor(mid * scale - spread / 2).astype(np.int64)
    lots = np.where(r == _ILLIQUID, 0.6, 0.3)
    return {
        "sym": sym,
        "ts": ts,
        "scale": scale,
        "bid": bid,
        "ask": bid + spread,
        "bid_size": 100 * rng.geometric(lots),
        "ask_size": 100 * rng.geometric(lots),
    }


def _trades(
    rng: np.random.Generator,
    day: _Day,
    s0: int,
    rate: np.ndarray,
    silent: np.ndarray,
    quotes: dict[str, np.ndarray],
    book: _Book,
) -> dict[str, np.ndarray]:
    """Trades against the quote prevailing strictly before each of them (this chunk's or the carried one)."""
    sym, _, ts = _event_times(rng, np.where(silent, 0.0, rate), s0, day.open_ns)
    # A (symbol, time) key orders both streams the same way; int64 holds 17 bits of symbol + 46 of ns.
    base = day.open_ns + s0 * NS
    quote_key = (quotes["sym"] << 46) + (quotes["ts"] - base)
    trade_key = (sym << 46) + (ts - base)
    prior = np.searchsorted(quote_key, trade_key, side="left") - 1
    in_chunk = prior >= 0
    in_chunk[in_chunk] = quotes["sym"][prior[in_chunk]] == sym[in_chunk]

    def prevailing(name: str) -> np.ndarray:
        values = getattr(book, name)[sym]
        values[in_chunk] = quotes[name][prior[in_chunk]]
        return values

    bid, ask, scale = prevailing("bid"), prevailing("ask"), prevailing("scale")
    quoted = bid > 0
    sym, ts, bid, ask, scale = sym[quoted], ts[quoted], bid[quoted], ask[quoted], scale[quoted]
    u = rng.random(sym.size)
    price_ticks = np.where(u < 0.5, ask, bid)
    at_mid = (u > 0.9) & (ask - bid >= 2)
    price_ticks = np.where(at_mid, (bid + ask) // 2, price_ticks)
    odd = rng.random(sym.size) < 0.2
    size = np.where(odd, rng.integers(1, 100, sym.size), 100 * rng.geometric(0.5, sym.size))
    return {"sym": sym, "ts": ts, "price": price_ticks / scale, "size": size.astype(np.float64)}


def _changed_quotes(quotes: dict[str, np.ndarray], book: _Book) -> dict[str, np.ndarray]:
    """The quotes that change their symbol's NBBO (vs the previous one, or the carried ``book``); update it."""
    sym = quotes["sym"]
    if sym.size == 0:
        return quotes
    state = np.column_stack([quotes[k] for k in ("bid", "ask", "bid_size", "ask_size")])
    carried = np.column_stack([book.bid, book.ask, book.bid_size, book.ask_size])
    first = np.append(True, sym[1:] != sym[:-1])
    previous = np.where(first[:, None], carried[sym], np.roll(state, 1, axis=0))
    keep = (state != previous).any(axis=1)
    last = np.append(sym[1:] != sym[:-1], True)
    bid, ask, bid_size, ask_size = state[last].T
    book.set(sym[last], bid, ask, bid_size, ask_size, quotes["scale"][last])
    return {k: v[keep] for k, v in quotes.items()}


def _canonical(names: np.ndarray, sym: np.ndarray, ts: np.ndarray, kind: str, **values: np.ndarray) -> pa.Table:
    n = sym.size
    columns = {
        "ts_ns": pa.array(ts, pa.int64()),
        "symbol": pa.array(names[sym], pa.string()),
        "kind": pa.array(np.full(n, kind, dtype=object), pa.string()),
    }
    for name in CANONICAL_SCHEMA.names[3:]:
        columns[name] = pa.array(values[name], pa.float64()) if name in values else pa.nulls(n, pa.float64())
    return pa.table(columns, schema=CANONICAL_SCHEMA)


def write_truth(market: SimulatedMarket, path: str | Path) -> None:
    """The ground truth (stretches and scripted events) as JSON: ``{"stretches": [...], "events": [...]}``."""
    doc = {"stretches": [s._asdict() for s in market.stretches], "events": [e._asdict() for e in market.events]}
    Path(path).write_text(json.dumps(doc, indent=1))


def read_truth(path: str | Path) -> tuple[list[Stretch], list[ScriptedEvent]]:
    """Inverse of :func:`write_truth`."""
    doc = json.loads(Path(path).read_text())
    return [Stretch(**s) for s in doc["stretches"]], [ScriptedEvent(**e) for e in doc["events"]]


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: simulate and write the canonical tick file and the reference CSV; print a one-line summary."""
    parser = argparse.ArgumentParser(prog="python -m conditioning.sim.market", description=__doc__.split("\n")[0])
    defaults = MarketConfig()
    parser.add_argument("--symbols", type=int, default=defaults.n_symbols)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--days", type=int, default=defaults.n_days)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=defaults.start, help="YYYY-MM-DD")
    parser.add_argument("--trades-per-day", type=float, default=defaults.trades_per_day)
    parser.add_argument("--no-scenarios", action="store_true", help="no staged SSR trigger / LULD pause")
    parser.add_argument("--out", type=Path, required=True, help="tick file: .parquet, .csv or .csv.gz")
    parser.add_argument("--reference", type=Path, required=True, help="reference CSV symbol,date,prev_close,tier")
    parser.add_argument("--truth", type=Path, help="also write the planted regimes and scripted events (JSON)")
    args = parser.parse_args(argv)
    try:
        config = MarketConfig(
            n_symbols=args.symbols,
            seed=args.seed,
            start=args.start,
            n_days=args.days,
            trades_per_day=args.trades_per_day,
            scenarios=not args.no_scenarios,
        )
    except ValueError as err:
        parser.error(str(err))
    started = time.perf_counter()
    market = simulate_market(config)
    write_ticks(market.ticks, args.out)
    write_reference(market.reference, args.reference)
    if args.truth is not None:
        write_truth(market, args.truth)
    elapsed = time.perf_counter() - started
    print(
        f"{market.ticks.num_rows:,} ticks for {config.n_symbols} symbols x {config.n_days} day(s) in {elapsed:.1f} s "
        f"-> {args.out}, {args.reference}; staged: " + ", ".join(f"{e.kind} {e.symbol}" for e in market.events)
    )


if __name__ == "__main__":
    main()
