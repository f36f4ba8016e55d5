"""``hrmcond dataset``: training/serving parity with the replay path, and the tokens and targets by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conditioning.artifacts import load_model
from conditioning.sim.market import MarketConfig, simulate_market
from conditioning.value import contexts, load_data
from flows.config import load_config
from flows.dataset import DATASET_SCHEMA, HORIZON_BARS, build_dataset, day_bars, session_ends
from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
from flows.runner import run_process
from schemas.records import ContextRecord, FeatureRecord

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """One simulated day of 3 symbols: the data set, and a plain replay (no inputs in the records) of it."""
    tmp = tmp_path_factory.mktemp("dataset")
    cfg = load_config(ROOT / "deploy" / "local.yaml")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dir": ROOT / cfg.model.dir})})
    sim = simulate_market(MarketConfig(n_symbols=3, n_days=1, seed=4, start=dt.date(2024, 3, 4), scenarios=False))
    build_dataset(cfg, sim.ticks, sim.reference, tmp / "ds.parquet")
    outputs = ReplayOutputs(tmp / "contexts.jsonl", tmp / "features.jsonl")
    run_process(build_replay_flow(cfg, sim.ticks, sim.reference, outputs))
    finish_replay(outputs)
    ctx = [ContextRecord.model_validate_json(x) for x in (tmp / "contexts.jsonl").read_bytes().splitlines()]
    feats = [FeatureRecord.model_validate_json(x) for x in (tmp / "features.jsonl").read_bytes().splitlines()]
    return cfg, tmp / "ds.parquet", ctx, feats


def test_dataset_matches_the_live_path(replayed):
    cfg, path, live_contexts, live_features = replayed
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == DATASET_SCHEMA
    assert table.num_rows == 3 * 390  # every session bar of every symbol
    data = load_data([path])
    ends = table.column("window_end_ns").to_numpy()
    key = {(s, int(e)): i for i, (s, e) in enumerate(zip(data.symbol, ends, strict=True))}
    model = load_model(cfg.model.dir, cfg.conditioning)
    rows = np.array([key[r.key] for r in live_contexts])
    assert data.has_context.sum() == len(live_contexts) > 1_000
    # The contexts the replay emits without the inputs flag are the data set's, bit for bit.
    np.testing.assert_array_equal(data.context[rows], np.array([r.context for r in live_contexts], dtype=np.float32))
    assert [str(s) for s in table.column("rag_status").take(rows).to_pylist()] == [r.rag_status for r in live_contexts]
    # The recorded inputs are the live features: normalised regime vector and pattern.
    by_key = {(f.symbol, f.window_end_ns): f for f in live_features}
    feats = [by_key[r.key] for r in live_contexts]
    raw = np.array([[np.nan if v is None else v for v in f.regime_features] for f in feats])
    np.testing.assert_array_equal(data.regime_features[rows], model.normalizer.transform(raw))
    np.testing.assert_array_equal(data.pattern[rows], np.array([f.pattern for f in feats], dtype=np.float32))
    assert data.has_rag[rows].sum() > 0.5 * len(rows)  # retrieval answered for most bars
    # Training's forward from the recorded inputs gives back the emitted context.
    with torch.no_grad():
        again = contexts(model.system, data, rows).numpy()
    np.testing.assert_allclose(again, data.context[rows], rtol=0, atol=1e-5)


def test_tokens_and_targets_by_hand():
    ends = session_ends(dt.date(2024, 3, 4), 60_000_000_000)
    assert len(ends) == 390
    bar = 60_000_000_000
    # One trade per bar, 1 ns before its end, at a price that doubles its log every bar: r_j = 0.001 j.
    trade_ts = ends - 1
    logp = np.cumsum(0.001 * np.arange(390))
    price = np.exp(logp) * 10
    quote_ts = ends - bar + 1
    spread = np.full(390, 0.002)
    out = day_bars(trade_ts, price, np.full(390, 100.0), quote_ts, spread, ends)
    r = np.diff(logp, prepend=logp[0])
    np.testing.assert_allclose(out["tokens"][:, 0], r, atol=1e-12)
    np.testing.assert_allclose(out["tokens"][:, 2], np.log1p(100.0))
    np.testing.assert_allclose(out["tokens"][:, 3], np.log1p(1.0))
    np.testing.assert_allclose(out["tokens"][:, 4], np.log(0.002))
    np.testing.assert_allclose(out["tokens"][:, 1], np.log(1e-6))  # one trade: no range
    j = 100
    np.testing.assert_allclose(out["fwd_log_rv"][j], np.log((r[j + 1 : j + 1 + HORIZON_BARS] ** 2).sum() + 1e-12))
    np.testing.assert_allclose(out["fwd_log_return"][j], logp[j + HORIZON_BARS] - logp[j])
    np.testing.assert_allclose(out["trail_log_rv_5"][j], np.log((r[j - 4 : j + 1] ** 2).sum() + 1e-12))
    assert np.isnan(out["fwd_log_rv"][390 - HORIZON_BARS :]).all()  # the horizon passes the close
    assert np.isfinite(out["fwd_log_rv"][: 390 - HORIZON_BARS]).all()
