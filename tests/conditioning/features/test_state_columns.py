"""``SymbolFeatures.on_ticks`` (a bar's ticks as columns, taken in one pass) == ``on_trade``/``on_quote`` of each
tick in turn, bit for bit: every bar record and the whole state after it, SSR/LULD tracker included."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from conditioning.features.batch import Ticks
from conditioning.features.state import FeatureParams, SymbolFeatures, feed_each, replay
from conditioning.sim.market import MarketConfig, simulate_market

from .conftest import synthetic_ticks


def tick_by_tick(features: SymbolFeatures, t: Ticks) -> list:
    """``state.replay`` with every tick fed on its own (the per-tick path on_ticks must equal)."""
    bar_ns, out = features.params.bar_ns, []
    next_end = int(t.ts_ns[0]) - int(t.ts_ns[0]) % bar_ns + bar_ns
    for i in range(len(t.ts_ns)):
        while int(t.ts_ns[i]) >= next_end:
            out.append(features.close_bar(next_end))
            next_end += bar_ns
        feed_each(features, t.rows(i, i + 1))
    out.append(features.close_bar(next_end))
    return out


def assert_identical(a: SymbolFeatures, bars_a: list, b: SymbolFeatures, bars_b: list) -> None:
    assert len(bars_a) == len(bars_b)
    for x, y in zip(bars_a, bars_b, strict=True):
        assert pickle.dumps(x) == pickle.dumps(y), x.window_end_ns  # every field, to the bit (NaNs included)
    assert pickle.dumps(a) == pickle.dumps(b)


@pytest.mark.parametrize(
    "params",
    [
        FeatureParams(bar_ns=60 * 10**9, lookback_ns=10 * 60 * 10**9),
        # 5 s bars, quotes stale after 2 s: staleness inside a bar, many empty bars
        FeatureParams(bar_ns=5 * 10**9, lookback_ns=120 * 10**9, quote_stale_ns=2 * 10**9),
    ],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_streams(seed: int, params: FeatureParams) -> None:
    t = synthetic_ticks(seed)  # crossed, locked, one-sided quotes; a silence; quotes only; same-ns bursts
    a, b = SymbolFeatures("SYM", params), SymbolFeatures("SYM", params)
    assert_identical(a, replay(a, t), b, tick_by_tick(b, t))


def test_simulated_market_with_ssr_and_luld() -> None:
    # reference data on: the SSR trigger (symbol 0) and the LULD limit state and pause (symbol 1) happen inside
    # runs of ticks, so on_ticks hands those runs to the tracker tick by tick and the rest at once
    market = simulate_market(MarketConfig(n_symbols=3, seed=3, trades_per_day=3000))
    states = set()
    for symbol in ("SIM00000", "SIM00001", "SIM00002"):
        t = Ticks.from_canonical(market.ticks, symbol)
        a, b = SymbolFeatures(symbol), SymbolFeatures(symbol)
        for r in market.reference:
            if r.symbol == symbol:
                for f in (a, b):
                    f.on_reference(r.date, r.prev_close, r.tier)
        bars_a = replay(a, t)
        assert_identical(a, bars_a, b, tick_by_tick(b, t))
        states |= {bar.ssr_luld_state.name for bar in bars_a}
    assert {"SSR_ACTIVE", "HALTED"} <= states


def test_a_run_it_cannot_take_changes_nothing() -> None:
    t = synthetic_ticks(1, minutes=5)
    f = SymbolFeatures("SYM")
    run = t.rows(0, 50)
    assert not f.on_ticks(run)  # no open bar yet: the first tick opens it, one by one
    feed_each(f, run.rows(0, 1))
    before = pickle.dumps(f)
    bad_price = run.price.copy()
    bad_price[np.flatnonzero(run.is_trade)[3]] = -1.0
    past_the_bar = run.ts_ns + 60 * 10**9
    for bad in (replace(run, price=bad_price), replace(run, ts_ns=past_the_bar), replace(run, ts_ns=run.ts_ns[::-1])):
        assert not f.on_ticks(bad.rows(1, len(bad)))
        assert pickle.dumps(f) == before
