"""PatternRAG: recall against brute force, fail-open deadline, concurrency, eviction, point in time, save/load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from conditioning.features.types import Pattern
from conditioning.rag import PatternRAG


class SlowRAG(PatternRAG):
    """An artificially slow index: every search sleeps inside the read lock while ``delay_s`` is set."""

    delay_s = 0.0

    def _knn(self, query, k, filter=None):
        time.sleep(self.delay_s)
        return super()._knn(query, k, filter)


class BrokenRAG(PatternRAG):
    def _knn(self, query, k, filter=None):
        raise RuntimeError("index exploded")


def wait_idle(rag: PatternRAG, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if rag._lock.idle:
            return True
        time.sleep(0.005)
    return False


@pytest.fixture(scope="module")
def filled(h):
    rng = np.random.default_rng(7)
    x = h.clustered_vectors(rng, 10_200)
    vectors, queries = x[:10_000], x[10_000:]
    rag = PatternRAG(128, 256, max_patterns=10_000)
    rag.update_pattern_library(h.make_patterns(vectors))
    yield rag, vectors, queries
    rag.close()


def ids_of(retrieval) -> np.ndarray:
    """The pattern ids of the neighbours (outcome[0] carries the id; see conftest.make_patterns)."""
    return np.where(retrieval.valid, retrieval.outcomes[..., 0], -1).astype(np.int64)


def test_rag_head_parameter_budget(h):
    rag = PatternRAG(128, 256)
    assert h.count_parameters(rag) == (6 * 64 + 64) + (64 * 256 + 256) == 17_088
    rag.close()


def test_recall_at_10_against_brute_force(filled, h):
    rag, vectors, queries = filled
    r = rag.retrieve(torch.from_numpy(queries), timeout_ms=5_000)
    assert r.status == "ok"
    exact = h.brute_force_knn(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_of(r), exact, strict=True)])
    assert recall >= 0.95
    # Similarities are the true cosines of the returned vectors.
    got = ids_of(r)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(r.similarity, np.einsum("qd,qkd->qk", q, unit[got]), atol=1e-4)


def test_forward_context_shape_and_latency_sanity(filled):
    rag, _, queries = filled
    q = torch.from_numpy(queries[:64])
    t0 = time.perf_counter()
    ctx = rag(q, timeout_ms=5_000)
    elapsed = time.perf_counter() - t0
    assert ctx.shape == (64, 256) and torch.isfinite(ctx).all()
    assert elapsed < 1.0  # generous sanity bound; the figures are in benchmarks/results/models_latency.json


def test_timeout_fails_open_and_leaves_the_index_healthy(h, rng):
    vectors = h.clustered_vectors(rng, 500)
    rag = SlowRAG(128, 256, max_patterns=1_000)
    rag.update_pattern_library(h.make_patterns(vectors))
    rag.delay_s = 0.5
    q = torch.from_numpy(vectors[:4] + 0.01)
    t0 = time.perf_counter()
    out = rag(q, timeout_ms=30)
    elapsed = time.perf_counter() - t0
    assert out is None
    assert elapsed < 0.25  # returned at the deadline, not after the 0.5 s search
    assert rag.retrieve(q, timeout_ms=30).status == "timeout"
    # An update issued while the slow searches run waits for them, then succeeds.
    rag.update_pattern_library(h.make_patterns(h.clustered_vectors(rng, 10), first_id=500))
    assert rag.size == 510
    assert wait_idle(rag), "the read lock was left held after a timeout"
    rag.delay_s = 0.0
    r = rag.retrieve(q, timeout_ms=2_000)
    assert r.status == "ok"
    np.testing.assert_array_equal(ids_of(r)[:, 0], np.arange(4))  # each query's nearest is its own pattern
    rag.close()


def test_index_error_fails_open_with_the_cause(h, rng):
    rag = BrokenRAG(128, 256, max_patterns=100)
    rag.update_pattern_library(h.make_patterns(h.clustered_vectors(rng, 20)))
    r = rag.retrieve(torch.randn(2, 128))
    assert r.status == "error" and "exploded" in str(r.error)
    assert rag(torch.randn(2, 128)) is None
    assert wait_idle(rag)
    rag.close()


def test_empty_library_status():
    rag = PatternRAG(128, 256, max_patterns=10)
    assert rag.retrieve(torch.randn(3, 128)).status == "empty"
    assert rag(torch.randn(3, 128)) is None
    rag.close()


def test_queries_during_updates_are_consistent(h, rng):
    """Four threads query while one writer streams updates that overwrite the oldest entries.

    Every answer must be a consistent snapshot: each returned neighbour's similarity equals the cosine between
    the query and that neighbour's vector (its id comes from its outcome). A torn read breaks that."""
    all_vectors = h.clustered_vectors(rng, 3_000)
    unit = all_vectors / np.linalg.norm(all_vectors, axis=1, keepdims=True)
    rag = PatternRAG(128, 256, max_patterns=1_000)
    rag.update_pattern_library(h.make_patterns(all_vectors[:1_000]))
    errors, answers = [], []
    stop = threading.Event()

    def reader(seed):
        local = np.random.default_rng(seed)
        while not stop.is_set():
            q = all_vectors[local.integers(0, 3_000, 8)] + 0.05 * local.standard_normal((8, 128)).astype(np.float32)
            try:
                r = rag.retrieve(torch.from_numpy(q), timeout_ms=2_000)
                answers.append((q, r))
            except Exception as err:  # noqa: BLE001 - any exception is the failure being tested
                errors.append(err)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for start in range(1_000, 3_000, 50):
        rag.update_pattern_library(h.make_patterns(all_vectors[start:start + 50], first_id=start))
        time.sleep(0.003)  # let readers in between writes (the lock prefers writers)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(answers) > 20 and all(r.status == "ok" for _, r in answers)
    for q, r in answers:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        np.testing.assert_allclose(r.similarity, np.einsum("qd,qkd->qk", qn, unit[ids_of(r)]), atol=1e-4)
    # After the stream: exactly the newest 1,000 remain, and search agrees with brute force over them.
    final = rag.retrieve(torch.from_numpy(all_vectors[2_500:2_510]), timeout_ms=2_000)
    exact = 2_000 + h.brute_force_knn(all_vectors[2_000:], all_vectors[2_500:2_510], 10)
    assert np.mean(ids_of(final) == exact) >= 0.95
    rag.close()


def test_eviction_keeps_the_newest(h, rng):
    vectors = h.clustered_vectors(rng, 80, clusters=80)
    rag = PatternRAG(128, 256, max_patterns=50, k=1)
    rag.update_pattern_library(h.make_patterns(vectors[:60]))
    rag.update_pattern_library(h.make_patterns(vectors[60:], first_id=60))
    assert rag.size == 50
    r = rag.retrieve(torch.from_numpy(vectors), timeout_ms=2_000)
    top = ids_of(r)[:, 0]
    assert np.all(top[30:] == np.arange(30, 80))  # live patterns find themselves
    assert not np.isin(top, np.arange(30)).any()  # the 30 oldest are gone
    rag.close()


def test_point_in_time_excludes_overlapping_and_future_patterns(h, rng):
    vectors = h.clustered_vectors(rng, 2_000, clusters=20)
    patterns = h.make_patterns(vectors)
    rag = PatternRAG(128, 256, max_patterns=2_000)
    rag.update_pattern_library(patterns)
    idx = np.array([100, 700, 1_500, 1_999])
    windows = np.array([[patterns[i].start_ns, patterns[i].end_ns] for i in idx])
    r = rag.retrieve(torch.from_numpy(vectors[idx]), timeout_ms=5_000, query_windows=windows)
    assert r.status == "ok"
    got = ids_of(r)
    outcome_end = np.array([p.outcome_end_ns for p in patterns])
    for row, i in enumerate(idx):
        eligible = np.flatnonzero(outcome_end <= windows[row, 0])  # known before the window opened
        assert np.all(np.isin(got[row], eligible))
        assert i not in got[row]  # the query's own pattern overlaps its window
        exact = eligible[h.brute_force_knn(vectors[eligible], vectors[i:i + 1], 10)[0]]
        assert len(set(got[row]) & set(exact)) >= 9


def test_point_in_time_when_the_nearest_are_all_in_the_future(h, rng):
    """50 near-duplicates of the query lie in the future: over-fetching 40 finds none valid, the exact
    filtered search must still return the 10 nearest of the past."""
    base = rng.standard_normal(128).astype(np.float32)
    past = h.clustered_vectors(rng, 300, clusters=30)
    future = base + 0.01 * rng.standard_normal((50, 128)).astype(np.float32)
    patterns = h.make_patterns(np.concatenate([past, future]))
    rag = PatternRAG(128, 256, max_patterns=400)
    rag.update_pattern_library(patterns)
    window = np.array([[patterns[320].start_ns, patterns[320].end_ns]])  # after all of `past` is known
    r = rag.retrieve(torch.from_numpy(base[None]), timeout_ms=5_000, query_windows=window)
    outcome_end = np.array([p.outcome_end_ns for p in patterns])
    eligible = np.flatnonzero(outcome_end <= window[0, 0])
    assert eligible.max() < 300
    exact = eligible[h.brute_force_knn(patterns_vectors := np.stack([p.vector for p in patterns])[eligible],
                                       base[None], 10)[0]]
    assert len(patterns_vectors) == len(eligible)
    assert r.valid.all()
    assert len(set(ids_of(r)[0]) & set(exact)) >= 9
    # A window before anything is known: no neighbour, and a zero (neutral) context for that row.
    early = np.array([[0, patterns[0].end_ns]])
    r0 = rag.retrieve(torch.from_numpy(base[None]), query_windows=early, timeout_ms=5_000)
    assert r0.status == "ok" and not r0.valid.any()
    assert torch.equal(rag.project(r0), torch.zeros(1, 256))
    rag.close()


def test_update_refuses_lookahead_and_bad_patterns_atomically(h, rng):
    rag = PatternRAG(128, 256, max_patterns=100)
    good = h.make_patterns(h.clustered_vectors(rng, 3))
    with pytest.raises(ValueError, match="as_of_ns"):
        rag.update_pattern_library(good, as_of_ns=good[0].outcome_end_ns)  # the later two are not known yet
    bad = Pattern("XXX", 0, 10, 20, np.zeros(128, dtype=np.float32), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="not all zero"):
        rag.update_pattern_library([*good, bad])
    nan_outcome = Pattern("XXX", 0, 10, 20, np.ones(128, dtype=np.float32), np.array([np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="outcome"):
        rag.update_pattern_library([nan_outcome])
    assert rag.size == 0
    with pytest.raises(ValueError, match=r"\[B, 128\]"):
        rag.retrieve(torch.randn(2, 64))
    with pytest.raises(ValueError, match="query_windows"):
        rag.retrieve(torch.randn(2, 128), query_windows=np.zeros((3, 2)))
    rag.close()


def test_save_load_round_trip(h, rng, tmp_path):
    vectors = h.clustered_vectors(rng, 700)
    rag = PatternRAG(128, 256, max_patterns=500)
    rag.update_pattern_library(h.make_patterns(vectors))  # wraps the ring: 200 evicted
    rag.save_library(tmp_path)
    twin = PatternRAG(128, 256, max_patterns=500)
    twin.load_state_dict(rag.state_dict())
    twin.load_library(tmp_path)
    assert twin.size == 500
    q = torch.from_numpy(vectors[::7] + 0.02)
    a, b = rag.retrieve(q, timeout_ms=5_000), twin.retrieve(q, timeout_ms=5_000)
    np.testing.assert_array_equal(ids_of(a), ids_of(b))
    torch.testing.assert_close(rag.project(a), twin.project(b))
    # The ring position survives: the next update overwrites the same (oldest) entries in both.
    more = h.make_patterns(h.clustered_vectors(rng, 5), first_id=700)
    rag.update_pattern_library(more)
    twin.update_pattern_library(more)
    np.testing.assert_array_equal(ids_of(rag.retrieve(q, timeout_ms=5_000)), ids_of(twin.retrieve(q, timeout_ms=5_000)))
    with pytest.raises(ValueError, match="max_patterns"):
        PatternRAG(128, 256, max_patterns=501).load_library(tmp_path)
    for r in (rag, twin):
        r.close()
