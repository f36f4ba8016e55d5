"""Shared inputs for pipeline tests: a small simulated market written as canonical files."""

from __future__ import annotations

import pytest

from conditioning.sim.market import MarketConfig, simulate_market
from schemas.canonical import write_ticks
from schemas.reference import write_reference


@pytest.fixture(scope="session")
def sim_files(tmp_path_factory):
    """Six symbols, one day, the staged SSR trigger and LULD pause: (ticks.parquet, reference.csv, market)."""
    market = simulate_market(MarketConfig(n_symbols=6, seed=3, trades_per_day=600))
    root = tmp_path_factory.mktemp("sim")
    ticks, ref = root / "ticks.parquet", root / "reference.csv"
    write_ticks(market.ticks, ticks)
    write_reference(market.reference, ref)
    return ticks, ref, market


@pytest.fixture
def taq_sample_args(shared_data) -> list[str]:
    """``hrmcond replay`` arguments for the real TAQ sample (XXX, 2018-01-02/03)."""
    return [
        *("--format", "taq"),
        *("--trades", str(shared_data / "taq_XXX_20180102-03_trades.csv.gz")),
        *("--quotes", str(shared_data / "taq_XXX_20180102-03_quotes.csv.gz")),
    ]
