"""The inference step: contexts independent of batch composition and, in event-time order, of the
interleaving the workers deliver in; one shared fail-open deadline per batch."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from conditioning.features.state import BarFeatures
from conditioning.features.types import Pattern
from conditioning.rag import PatternRAG
from flows.bars import Heartbeat
from flows.config import load_config
from flows.contexts import INFER_ROWS, InferenceLogic, load_engine
from flows.metrics import sample
from schemas.layout import OUTCOME_DIM, SsrLuldState

T0 = 1_709_562_660_000_000_000  # 2024-03-04 09:31 ET, after the shipped library's patterns are known
MIN = 60 * 10**9


def bars(n: int, seed: int = 0, symbols: int = 7, matured: bool = False) -> list[BarFeatures]:
    """``n`` bars of ``symbols`` symbols, one bar end after another; with ``matured``, each bar brings the
    pattern whose outcome its end made known (the online library's input)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        regime = rng.normal(0, 1, 20)
        regime[3:7] = np.eye(4)[0]
        regime[7:17] = rng.dirichlet(np.ones(10))
        end, symbol = T0 + (i // symbols) * MIN, f"S{i % symbols}"
        done = (
            [
                Pattern(
                    symbol,
                    end - 40 * MIN,
                    end - 10 * MIN,
                    end,
                    rng.normal(0, 1, 128).astype(np.float32),
                    rng.normal(0, 1e-3, OUTCOME_DIM).astype(np.float32),
                )
            ]
            if matured
            else []
        )
        out.append(
            BarFeatures(
                symbol=symbol,
                window_start_ns=end - 30 * MIN,
                window_end_ns=end,
                n_trades=10,
                n_quotes=10,
                rv=1e-5,
                tsrv=1e-5,
                bpv=1e-5,
                amihud=1e-3,
                ssr_luld_state=SsrLuldState.NORMAL,
                volume_profile=regime[7:17],
                spread=np.full(3, 1e-3),
                regime_features=regime,
                pattern=rng.normal(0, 1, 128).astype(np.float32),
                matured=done,
                flags=(),
            )
        )
    return out


@pytest.fixture(scope="module")
def engine():
    cfg = load_config("deploy/local.yaml", env={"HRMCOND__PIPELINE__RAG_ONLINE_UPDATES": "false"})
    return load_engine(cfg, deterministic=False)


def test_a_bars_context_does_not_depend_on_its_batch():
    # a generous deadline: a retrieval timing out on a loaded machine would change the context on purpose
    engine = load_engine(
        load_config(
            "deploy/local.yaml",
            env={"HRMCOND__PIPELINE__RAG_ONLINE_UPDATES": "false", "HRMCOND__CONDITIONING__RAG__TIMEOUT_MS": "10000"},
        ),
        deterministic=False,
    )
    batch = bars(3 * INFER_ROWS + 5)
    by_key = {(d.bar.symbol, d.bar.window_end_ns): d for _, d in engine.drafts(batch)[0]}
    for bar in batch[::9]:
        ((_, alone),) = engine.drafts([bar])[0]
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


def worker_streams(batch: list[BarFeatures], symbols: int) -> tuple[list, list]:
    """What the inference key receives from the bar step, in two interleavings: every symbol in step (one
    worker), and the last symbol's worker 12 bar ends behind the others, in batches of other sizes. Each
    symbol's bars and heartbeats keep their own order, as they do on the channel from its worker."""
    in_step = [x for b in batch for x in (b, Heartbeat(b.symbol, b.window_end_ns, symbols))]
    lagging = f"S{symbols - 1}"

    def arrival(x):
        t = x.window_end_ns if isinstance(x, BarFeatures) else x.ts_ns
        return t + 12 * MIN * (x.symbol == lagging)

    skewed = sorted(in_step, key=arrival)  # stable: a bar stays ahead of its heartbeat
    return [in_step[i : i + 5] for i in range(0, len(in_step), 5)], [
        skewed[i : i + 7] for i in range(0, len(skewed), 7)
    ]


def run_inference(batches: list[list], resume_after: int | None = None) -> list:
    """(symbol, window end, context, RAG status) of every draft, in output order; a fresh engine (library)
    per run. With ``resume_after``, the step is snapshotted after that many batches and resumed anew."""
    cfg = load_config("deploy/local.yaml", env={})
    logic = InferenceLogic(load_engine(cfg, deterministic=True), None)
    out = []
    for i, values in enumerate(batches):
        if i == resume_after:
            state = pickle.loads(pickle.dumps(logic.snapshot()))
            logic = InferenceLogic(load_engine(cfg, deterministic=True), state)
        out += logic.on_batch(values)[0]
    out += logic.on_eof()[0]
    return [(d.bar.symbol, d.bar.window_end_ns, d.context, d.rag_status) for _, d in out]


def run_on_arrival(batches: list[list]) -> list:
    """The control: each batch's bars conditioned as they arrive, as a step without event-time order would."""
    engine = load_engine(load_config("deploy/local.yaml", env={}), deterministic=True)
    out = []
    for values in batches:
        batch = sorted((b for b in values if isinstance(b, BarFeatures)), key=lambda b: (b.window_end_ns, b.symbol))
        if batch:
            out += engine.drafts(batch)[0]
    return [(d.bar.symbol, d.bar.window_end_ns, d.context, d.rag_status) for _, d in out]


def test_event_time_order_makes_contexts_independent_of_worker_interleaving():
    symbols = 3
    batch = bars(symbols * 45, seed=4, symbols=symbols, matured=True)
    in_step, skewed = worker_streams(batch, symbols)
    reference = run_inference(in_step)
    assert [(t, s) for s, t, _, _ in reference] == sorted((b.window_end_ns, b.symbol) for b in batch)
    assert {status for *_, status in reference} == {"ok"}
    assert run_inference(skewed) == reference
    assert run_inference(skewed, resume_after=len(skewed) // 2) == reference
    # control: conditioned as they arrive, the lagging worker's queries see a library the others have moved on
    arrival = run_on_arrival(skewed)
    assert sorted(arrival, key=lambda r: (r[1], r[0])) != sorted(reference, key=lambda r: (r[1], r[0]))


def test_live_batch_does_not_wait_for_a_stuck_query_to_add_its_patterns(monkeypatch):
    """A query stuck past its deadline holds the index's read lock until it returns; the batch's library update
    needs the write lock. Live, the contexts go out at the deadline and the update follows when it can, in
    order with the next batch's (which queues behind it)."""
    import threading

    release = threading.Event()
    original = PatternRAG._knn

    def stuck(self, *args, **kwargs):
        release.wait()
        return original(self, *args, **kwargs)

    cfg = load_config("deploy/local.yaml", env={})
    engine = load_engine(cfg, deterministic=False)
    rag = engine.system.pattern_rag
    before = rag._total
    monkeypatch.setattr(PatternRAG, "_knn", stuck)
    batch = bars(2 * 3, seed=5, symbols=3, matured=True)
    result = []
    worker = threading.Thread(target=lambda: result.append(engine.drafts(batch)))
    worker.start()
    worker.join(timeout=10)
    stalled = worker.is_alive()
    release.set()
    worker.join()
    assert not stalled, "the batch waited for the stuck query"
    drafts, added = result[0]
    assert {d.rag_status for _, d in drafts} == {"timeout"} and len(added) == len(batch)
    monkeypatch.setattr(PatternRAG, "_knn", original)
    later = bars(3, seed=6, symbols=3, matured=True)
    assert len(engine.drafts(later)[1]) == len(later)
    engine.close()
    # both updates went through once the query let go, in order
    assert rag._total == before + len(batch) + len(later)
    assert list(rag._outcome_end_ns[(rag._total - 3 + np.arange(3)) % rag.max_patterns]) == [
        p.outcome_end_ns for b in later for p in b.matured
    ]


def test_live_library_update_leaves_the_emitting_path_and_lands_before_the_next_query(monkeypatch):
    """Live as in replay: a batch's contexts go out while its patterns are still being added, and the next batch's
    queries see them (the library the input implies, whatever the timing)."""
    import threading

    gate = threading.Event()
    update, knn = PatternRAG.update_pattern_library, PatternRAG._knn

    def held_update(self, *args, **kwargs):
        gate.wait(timeout=5)  # an inline update would hold the batch this long, then fail the first assert
        return update(self, *args, **kwargs)

    seen: list[int] = []

    def counting_knn(self, *args, **kwargs):
        seen.append(self._total)
        return knn(self, *args, **kwargs)

    engine = load_engine(load_config("deploy/local.yaml", env={}), deterministic=False)
    rag = engine.system.pattern_rag
    before = rag._total
    monkeypatch.setattr(PatternRAG, "update_pattern_library", held_update)
    monkeypatch.setattr(PatternRAG, "_knn", counting_knn)
    first = bars(3, seed=7, symbols=3, matured=True)
    drafts, added = engine.drafts(first)
    assert len(drafts) == 3 and len(added) == 3
    assert rag._total == before, "the contexts waited for the library update"
    opener = threading.Timer(0.3, gate.set)
    opener.start()
    seen.clear()
    engine.drafts(bars(3, seed=8, symbols=3))
    opener.join()
    assert seen and set(seen) == {before + 3}, "the next batch queried before the update landed"
    engine.close()


def test_breaker_skips_a_stuck_index_then_probes_it(monkeypatch):
    calls = []
    stuck = {"on": True}
    original = PatternRAG._knn

    def knn(self, *args, **kwargs):
        calls.append(1)
        if stuck["on"]:
            time.sleep(0.1)  # past the 60 ms deadline
        return original(self, *args, **kwargs)

    cfg = load_config(
        "deploy/local.yaml",
        env={"HRMCOND__PIPELINE__RAG_BREAKER_AFTER": "2", "HRMCOND__PIPELINE__RAG_BREAKER_COOLDOWN_MS": "300"},
    )
    engine = load_engine(cfg, deterministic=False)
    monkeypatch.setattr(PatternRAG, "_knn", knn)

    def statuses(seed):
        return {d.rag_status for _, d in engine.drafts(bars(4, seed=seed))[0]}

    assert statuses(1) == statuses(2) == {"timeout"}  # two failed batches in a row: open
    before = len(calls)
    assert statuses(3) == {"unavailable"} and len(calls) == before  # not asked
    assert sample("hrmcond_rag_breaker_open") == 1
    time.sleep(0.35)
    stuck["on"] = False
    assert statuses(4) == {"ok"} and len(calls) > before  # the probe answers: closed
    assert sample("hrmcond_rag_breaker_open") == 0
    assert statuses(5) == {"ok"}
    engine.close()


def test_breaker_state_machine():
    from flows.breaker import RetrievalBreaker

    b = RetrievalBreaker(trip_after=2, cooldown_ns=100)
    b.record(True, 0)
    assert b.allows(1)
    b.record(False, 2)  # an answer resets the count
    b.record(True, 3)
    assert b.allows(4)
    b.record(True, 5)
    assert not b.allows(6) and not b.allows(104) and b.allows(105)
    b.record(True, 105)  # the probe failed: open again
    assert not b.allows(106) and b.allows(205)
    never = RetrievalBreaker(trip_after=0, cooldown_ns=100)
    for t in range(10):
        never.record(True, t)
    assert never.allows(10)


def test_bars_wait_for_every_partitions_clock():
    """Two partitions: a bar is conditioned only once both clocks have passed its end, and a clock counts as
    passed only when every key it sent to reported back."""
    cfg = load_config("deploy/local.yaml", env={})
    logic = InferenceLogic(load_engine(cfg, deterministic=True), None)
    s0, s1 = bars(2, symbols=2)  # S0 in partition a, S1 in partition b, both ending at T0
    end = s0.window_end_ns

    def beat(symbol: str, clock: str, fanout: int = 2) -> Heartbeat:
        return Heartbeat(symbol, end, fanout, clock, 2)

    assert logic.on_batch([s0, beat("S0", "a"), beat("@a", "a")])[0] == []  # partition b has not reported
    assert logic.on_batch([s1, beat("S1", "b")])[0] == []  # b's own key has not reported back yet
    done = logic.on_batch([beat("@b", "b")])[0]
    assert [(sym, d.bar.window_end_ns) for sym, d in done] == [("S0", end), ("S1", end)]
    assert logic.state.held == [] and logic.state.passed == {}


def test_an_evicted_symbol_leaves_after_its_bars_and_its_smoother_is_discarded():
    cfg = load_config("deploy/local.yaml", env={})
    engine = load_engine(cfg, deterministic=True)
    logic = InferenceLogic(engine, None)
    first, back = bars(3, symbols=1)[0::2]  # S0 at T0, evicted; back again at T0 + 2 min
    end, end2 = first.window_end_ns, back.window_end_ns
    out = logic.on_batch(
        [
            first,
            Heartbeat("S0", end, 2, evict=True),
            back,
            Heartbeat("@ticks", end, 2),
            Heartbeat("S0", end2, 2),
            Heartbeat("@ticks", end2, 2),
        ]
    )[0]
    assert [(sym, d if d is None else d.bar.window_end_ns) for sym, d in out] == [
        ("S0", end),
        ("S0", None),
        ("S0", end2),
    ]
    smoother, record = engine.finish(None, out[0][1])
    assert smoother is not None and record is not None
    assert engine.finish(smoother, None) == (None, None)  # None state: Bytewax drops the symbol's smoother
