"""Streaming == batch on the real TAQ (two days, NBBO across venues) and LOBSTER (AAPL, Nasdaq) samples."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.features.batch import Ticks
from conditioning.features.state import FeatureParams

from .test_streaming_vs_batch import assert_streaming_matches_batch

pytestmark = pytest.mark.shared_data

PARAMS = FeatureParams()  # 1-minute bars, 30-minute window, data-driven K


def test_taq_sample(shared_data) -> None:
    from flows.sources.taq import read_taq

    table = read_taq(
        shared_data / "taq_XXX_20180102-03_trades.csv.gz", shared_data / "taq_XXX_20180102-03_quotes.csv.gz"
    )
    ticks = Ticks.from_canonical(table, "XXX")
    assert ticks.is_trade.sum() > 10_000 and (~ticks.is_trade).sum() > 10_000
    n_bars = assert_streaming_matches_batch(ticks, PARAMS, "XXX")
    assert n_bars > 2 * 390


def test_lobster_sample(shared_data) -> None:
    from flows.sources.lobster import read_lobster

    table = read_lobster(shared_data / "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip")
    ticks = Ticks.from_canonical(table, "AAPL")
    assert np.unique(table["symbol"].to_numpy(zero_copy_only=False)).tolist() == ["AAPL"]
    assert assert_streaming_matches_batch(ticks, PARAMS, "AAPL") >= 390
