"""The inference step: contexts independent of batch composition, one shared fail-open deadline per batch."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conditioning.features.state import BarFeatures
from conditioning.features.types import SsrLuldState
from conditioning.rag import PatternRAG
from flows.config import load_config
from flows.contexts import INFER_ROWS, load_engine

T0 = 1_709_562_660_000_000_000  # 2024-03-04 09:31 ET, after the shipped library's patterns are known
MIN = 60 * 10**9


def bars(n: int, seed: int = 0) -> list[BarFeatures]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        regime = rng.normal(0, 1, 20)
        regime[3:7] = np.eye(4)[0]
        regime[7:17] = rng.dirichlet(np.ones(10))
        end = T0 + (i // 7) * MIN
        out.append(BarFeatures(
            symbol=f"S{i % 7}", window_start_ns=end - 30 * MIN, window_end_ns=end, n_trades=10, n_quotes=10,
            rv=1e-5, tsrv=1e-5, bpv=1e-5, amihud=1e-3, ssr_luld_state=SsrLuldState.NORMAL,
            volume_profile=regime[7:17], spread=np.full(3, 1e-3), regime_features=regime,
            pattern=rng.normal(0, 1, 128).astype(np.float32), matured=[], flags=(),
        ))
    return out


@pytest.fixture(scope="module")
def engine():
    cfg = load_config("deploy/local.yaml", env={"HRMCOND__PIPELINE__RAG_ONLINE_UPDATES": "false"})
    return load_engine(cfg, deterministic=False)


def test_a_bars_context_does_not_depend_on_its_batch(engine):
    batch = bars(3 * INFER_ROWS + 5)
    by_key = {(d.bar.symbol, d.bar.window_end_ns): d for _, d in engine.drafts(batch)[0]}
    for bar in batch[::9]:
        (_, alone), = engine.drafts([bar])[0]
        assert alone.context == by_key[(bar.symbol, bar.window_end_ns)].context  # bit for bit
        assert alone.regime_probs == by_key[(bar.symbol, bar.window_end_ns)].regime_probs


def test_one_deadline_for_the_whole_batch(engine, monkeypatch):
    original = PatternRAG._knn

    def stuck(self, *args, **kwargs):
        time.sleep(0.2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PatternRAG, "_knn", stuck)
    timeout_s = engine.system.config.rag.timeout_ms / 1e3
    batch = bars(10 * INFER_ROWS)
    start = time.perf_counter()
    drafts, _ = engine.drafts(batch)
    elapsed = time.perf_counter() - start
    assert len(drafts) == len(batch) and {d.rag_status for _, d in drafts} == {"timeout"}
    # ten chunks each waiting out their own timeout would take >= 10 x 60 ms
    assert elapsed < 5 * timeout_s, f"{elapsed * 1e3:.0f} ms for a batch of 10 chunks"
