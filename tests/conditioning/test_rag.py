"""PatternRAG: exact search (against brute force and hnswlib), fail-open deadline, concurrency, eviction, point in time,
save/load. (The distance arithmetic against hnswlib's own: test_ip_kernel.py.)"""

from __future__ import annotations

import threading
import time

import hnswlib
import numpy as np
import pytest
import torch

from conditioning.features.types import Pattern
from conditioning.library import EXACT_MAX, unit_vectors
from conditioning.rag import PatternRAG

from .conftest import BAR_NS, brute_force_knn, clustered_vectors, count_parameters, make_patterns


class SlowRAG(PatternRAG):
    """An artificially slow index: every search sleeps inside the read lock while ``delay_s`` is set."""

    delay_s = 0.0

    def _knn(self, *args):
        time.sleep(self.delay_s)
        return super()._knn(*args)


class BrokenRAG(PatternRAG):
    def _knn(self, *args):
        raise RuntimeError("index exploded")


def wait_idle(rag: PatternRAG, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if rag._lock.idle:
            return True
        time.sleep(0.005)
    return False


@pytest.fixture(scope="module")
def filled():
    rng = np.random.default_rng(7)
    x = clustered_vectors(rng, 10_200)
    vectors, queries = x[:10_000], x[10_000:]
    rag = PatternRAG(128, 256, max_patterns=10_000)
    rag.update_pattern_library(make_patterns(vectors))
    yield rag, vectors, queries
    rag.close()


def ids_of(retrieval) -> np.ndarray:
    """The pattern ids of the neighbours (outcome[0] carries the id; see conftest.make_patterns)."""
    return np.where(retrieval.valid, retrieval.outcomes[..., 0], -1).astype(np.int64)


def live_ids(rag: PatternRAG) -> np.ndarray:
    """Ids of the entries in the library's metadata rows, sorted."""
    return np.sort(rag._outcome[: rag.size, 0].astype(np.int64))


def assert_index_holds_exactly(rag: PatternRAG, first: int, total: int) -> None:
    """White box: the library holds entries [first, total) and nothing else: as many, and each live entry's own unit
    vector finds that entry's row first."""
    assert (rag.size, rag._total) == (total - first, total)
    rows = np.arange(first, total) % rag.max_patterns
    unit = rag._unit[rows]
    labels, dist = rag._knn(unit, unit, None, 1)
    np.testing.assert_array_equal(labels[:, 0], rows)


def saved_bytes(rag: PatternRAG, directory) -> dict[str, bytes]:
    rag.save_library(directory)
    return {name: (directory / name).read_bytes() for name in ("patterns.npz",)}


def test_rag_head_parameter_budget():
    rag = PatternRAG(128, 256)
    assert count_parameters(rag) == (6 * 64 + 64) + (64 * 256 + 256) == 17_088
    rag.close()


def test_search_is_exact_against_brute_force(filled):
    rag, vectors, queries = filled
    r = rag.retrieve(torch.from_numpy(queries), timeout_ms=5_000)
    assert r.status == "ok"
    exact = brute_force_knn(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_of(r), exact, strict=True)])
    assert recall == 1.0
    # Similarities are the true cosines of the returned vectors.
    got = ids_of(r)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(r.similarity, np.einsum("qd,qkd->qk", q, unit[got]), atol=1e-4)


def test_unit_vectors_and_distances_are_hnswlib_s_own(filled):
    """The library normalises as hnswlib does, bit for bit, and reports the distances an hnswlib HNSW index over the
    same vectors reports for the same neighbours (its recall is below 1: compared where both name the neighbour)."""
    rag, vectors, queries = filled
    raw = np.concatenate([vectors[:500], 1e3 * queries, 1e-3 * queries])
    hnsw = hnswlib.Index(space="cosine", dim=128)
    hnsw.init_index(max_elements=len(raw), M=16, ef_construction=200, random_seed=0)
    hnsw.add_items(raw, np.arange(len(raw)), num_threads=1)
    assert np.array_equal(unit_vectors(raw), hnsw.get_items(np.arange(len(raw)), return_type="numpy"))
    hnsw = hnswlib.Index(space="cosine", dim=128)
    hnsw.init_index(max_elements=len(vectors), M=16, ef_construction=200, random_seed=0)
    hnsw.add_items(vectors, np.arange(len(vectors)), num_threads=1)
    hnsw.set_ef(64)
    labels, dist = hnsw.knn_query(queries, k=10, num_threads=1)
    r = rag.retrieve(torch.from_numpy(queries), timeout_ms=5_000)
    same = ids_of(r) == labels.astype(np.int64)  # ids = entry numbers here
    assert same.mean() > 0.9
    np.testing.assert_array_equal(r.similarity[same], (1.0 - dist[same]).astype(np.float32))


def test_forward_context_shape_and_latency_sanity(filled):
    rag, _, queries = filled
    q = torch.from_numpy(queries[:64])
    t0 = time.perf_counter()
    ctx = rag(q, timeout_ms=5_000)
    elapsed = time.perf_counter() - t0
    assert ctx.shape == (64, 256) and torch.isfinite(ctx).all()
    assert elapsed < 1.0  # generous sanity bound; the figures are in benchmarks/results/models_latency.json


def test_repeated_rows_are_searched_once(filled, monkeypatch):
    rag, _, queries = filled
    searched = []
    original = PatternRAG._knn

    def counting(self, query, *args):
        searched.append(len(query))
        return original(self, query, *args)

    monkeypatch.setattr(PatternRAG, "_knn", counting)
    rows = [0, 1, 0, 0, 2, 1]  # e.g. a padded batch
    starts = np.array([[20_000 * BAR_NS, 20_001 * BAR_NS]] * 6, dtype=np.int64)  # every pattern known
    starts[3] = [20_002 * BAR_NS, 20_003 * BAR_NS]  # same query, another window: a distinct search
    res = rag.retrieve(torch.from_numpy(queries[rows]), 10_000, starts)
    assert searched == [4]
    alone = [rag.retrieve(torch.from_numpy(queries[[r]]), 10_000, starts[[i]]) for i, r in enumerate(rows)]
    for i, one in enumerate(alone):
        assert np.array_equal(res.labels[i], one.labels[0]) and np.array_equal(res.similarity[i], one.similarity[0])
        assert np.array_equal(res.outcomes[i], one.outcomes[0])
    assert res.valid.all()


def test_timeout_fails_open_and_leaves_the_index_healthy(rng):
    vectors = clustered_vectors(rng, 500)
    rag = SlowRAG(128, 256, max_patterns=1_000)
    rag.update_pattern_library(make_patterns(vectors))
    rag.delay_s = 0.5
    q = torch.from_numpy(vectors[:4] + 0.01)
    t0 = time.perf_counter()
    out = rag(q, timeout_ms=30)
    elapsed = time.perf_counter() - t0
    assert out is None
    assert elapsed < 0.25  # returned at the deadline, not after the 0.5 s search
    assert rag.retrieve(q, timeout_ms=30).status == "timeout"
    # An update issued while the slow searches run waits for them, then succeeds.
    rag.update_pattern_library(make_patterns(clustered_vectors(rng, 10), first_id=500))
    assert rag.size == 510
    assert wait_idle(rag), "the read lock was left held after a timeout"
    rag.delay_s = 0.0
    r = rag.retrieve(q, timeout_ms=2_000)
    assert r.status == "ok"
    np.testing.assert_array_equal(ids_of(r)[:, 0], np.arange(4))  # each query's nearest is its own pattern
    rag.close()


def test_index_error_fails_open_with_the_cause(rng):
    rag = BrokenRAG(128, 256, max_patterns=100)
    rag.update_pattern_library(make_patterns(clustered_vectors(rng, 20)))
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


def test_queries_during_updates_are_consistent(rng):
    """Four threads query while one writer streams updates that overwrite the oldest entries.

    Every answer must be a consistent snapshot: each returned neighbour's similarity equals the cosine between
    the query and that neighbour's vector (its id comes from its outcome). A torn read breaks that."""
    all_vectors = clustered_vectors(rng, 3_000)
    unit = all_vectors / np.linalg.norm(all_vectors, axis=1, keepdims=True)
    rag = PatternRAG(128, 256, max_patterns=1_000)
    rag.update_pattern_library(make_patterns(all_vectors[:1_000]))
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
        rag.update_pattern_library(make_patterns(all_vectors[start : start + 50], first_id=start))
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
    exact = 2_000 + brute_force_knn(all_vectors[2_000:], all_vectors[2_500:2_510], 10)
    assert np.mean(ids_of(final) == exact) >= 0.95
    rag.close()


def test_eviction_keeps_the_newest(rng):
    vectors = clustered_vectors(rng, 80, clusters=80)
    rag = PatternRAG(128, 256, max_patterns=50, k=1)
    rag.update_pattern_library(make_patterns(vectors[:60]))
    rag.update_pattern_library(make_patterns(vectors[60:], first_id=60))
    assert rag.size == 50
    r = rag.retrieve(torch.from_numpy(vectors), timeout_ms=2_000)
    top = ids_of(r)[:, 0]
    assert np.all(top[30:] == np.arange(30, 80))  # live patterns find themselves
    assert not np.isin(top, np.arange(30)).any()  # the 30 oldest are gone
    rag.close()


def test_point_in_time_excludes_overlapping_and_future_patterns(rng):
    vectors = clustered_vectors(rng, 2_000, clusters=20)
    patterns = make_patterns(vectors)
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
        exact = eligible[brute_force_knn(vectors[eligible], vectors[i : i + 1], 10)[0]]
        assert len(set(got[row]) & set(exact)) >= 9


def test_point_in_time_when_the_nearest_are_all_in_the_future(rng):
    """50 near-duplicates of the query lie in the future: over-fetching 40 finds none valid, the exact
    filtered search must still return the 10 nearest of the past."""
    base = rng.standard_normal(128).astype(np.float32)
    past = clustered_vectors(rng, 300, clusters=30)
    future = base + 0.01 * rng.standard_normal((50, 128)).astype(np.float32)
    patterns = make_patterns(np.concatenate([past, future]))
    rag = PatternRAG(128, 256, max_patterns=400)
    rag.update_pattern_library(patterns)
    window = np.array([[patterns[320].start_ns, patterns[320].end_ns]])  # after all of `past` is known
    r = rag.retrieve(torch.from_numpy(base[None]), timeout_ms=5_000, query_windows=window)
    outcome_end = np.array([p.outcome_end_ns for p in patterns])
    eligible = np.flatnonzero(outcome_end <= window[0, 0])
    assert eligible.max() < 300
    exact = eligible[
        brute_force_knn(patterns_vectors := np.stack([p.vector for p in patterns])[eligible], base[None], 10)[0]
    ]
    assert len(patterns_vectors) == len(eligible)
    assert r.valid.all()
    assert len(set(ids_of(r)[0]) & set(exact)) >= 9
    # A window before anything is known: no neighbour, and a zero (neutral) context for that row.
    early = np.array([[0, patterns[0].end_ns]])
    r0 = rag.retrieve(torch.from_numpy(base[None]), query_windows=early, timeout_ms=5_000)
    assert r0.status == "ok" and not r0.valid.any()
    assert torch.equal(rag.project(r0), torch.zeros(1, 256))
    rag.close()


def test_point_in_time_when_many_are_eligible_and_the_nearest_are_not(rng):
    """More than EXACT_MAX entries are known (the matrix-product search), but the 60 nearest are all too recent:
    the search returns exactly the 10 nearest known ones."""
    base = rng.standard_normal(128).astype(np.float32)
    past = clustered_vectors(rng, EXACT_MAX + 500, clusters=50)
    future = base + 0.01 * rng.standard_normal((60, 128)).astype(np.float32)
    patterns = make_patterns(np.concatenate([past, future]))
    rag = PatternRAG(128, 256, max_patterns=len(patterns))
    rag.update_pattern_library(patterns)
    window = np.array([[patterns[len(past) + 20].start_ns, patterns[len(past) + 20].end_ns]])
    eligible = np.flatnonzero(np.array([p.outcome_end_ns for p in patterns]) <= window[0, 0])
    assert EXACT_MAX < len(eligible) <= len(past)
    r = rag.retrieve(torch.from_numpy(base[None]), timeout_ms=5_000, query_windows=window)
    unfiltered = rag.retrieve(torch.from_numpy(base[None]), timeout_ms=5_000)
    assert np.all(ids_of(unfiltered)[0] >= len(past))  # the nearest are the future ones
    exact = eligible[brute_force_knn(past[eligible], base[None], 10)[0]]
    np.testing.assert_array_equal(ids_of(r)[0], exact)
    rag.close()


def test_update_refuses_lookahead_and_bad_patterns_atomically(rng):
    rag = PatternRAG(128, 256, max_patterns=100)
    good = make_patterns(clustered_vectors(rng, 3))
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


def test_save_load_round_trip(rng, tmp_path):
    vectors = clustered_vectors(rng, 700)
    rag = PatternRAG(128, 256, max_patterns=500)
    rag.update_pattern_library(make_patterns(vectors))  # wraps the ring: 200 evicted
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
    more = make_patterns(clustered_vectors(rng, 5), first_id=700)
    rag.update_pattern_library(more)
    twin.update_pattern_library(more)
    np.testing.assert_array_equal(ids_of(rag.retrieve(q, timeout_ms=5_000)), ids_of(twin.retrieve(q, timeout_ms=5_000)))
    with pytest.raises(ValueError, match="max_patterns"):
        PatternRAG(128, 256, max_patterns=501).load_library(tmp_path)
    for r in (rag, twin):
        r.close()


# ---------------------------------------------------------------- online updates of a full library
def test_rounds_of_overwrites_keep_exactness_and_the_newest(rng):
    """A full library overwritten seven times over, in calls of uneven sizes: after every round the live set is
    exactly the newest max_patterns entries and search agrees with brute force over them."""
    n_lib, rounds = 1_000, 7
    vectors = clustered_vectors(rng, n_lib * (rounds + 1))
    patterns = make_patterns(vectors)
    rag = PatternRAG(128, 256, max_patterns=n_lib)
    rag.update_pattern_library(patterns[:n_lib])
    sizes, added = [1, 37, 200, 64, 333], n_lib
    for r in range(1, rounds + 1):
        while added < n_lib * (r + 1):
            step = min(sizes[added % len(sizes)], n_lib * (r + 1) - added)
            rag.update_pattern_library(patterns[added : added + step])
            added += step
        assert rag.size == n_lib
        np.testing.assert_array_equal(live_ids(rag), np.arange(added - n_lib, added))
        assert_index_holds_exactly(rag, added - n_lib, added)
        queries = vectors[added - n_lib : added][rng.integers(0, n_lib, 100)] + 0.05 * rng.standard_normal(
            (100, 128)
        ).astype(np.float32)
        got = ids_of(rag.retrieve(torch.from_numpy(queries), timeout_ms=5_000))
        exact = added - n_lib + brute_force_knn(vectors[added - n_lib : added], queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
        assert recall == 1.0, (r, recall)
    rag.close()


def test_eviction_order_one_at_a_time(rng):
    """Oldest first, one entry at a time: a query for each vector finds it exactly while it is among the newest
    max_patterns, never after."""
    vectors = clustered_vectors(rng, 400, clusters=400)
    rag = PatternRAG(128, 256, max_patterns=40, k=1)
    for i in range(400):
        rag.update_pattern_library(make_patterns(vectors[i : i + 1], first_id=i))
        if i % 23 == 0 or i == 399:
            top = ids_of(rag.retrieve(torch.from_numpy(vectors[: i + 1]), timeout_ms=2_000))[:, 0]
            lo = max(0, i + 1 - 40)
            np.testing.assert_array_equal(top[lo:], np.arange(lo, i + 1))
            assert not np.isin(top, np.arange(lo)).any()
    assert_index_holds_exactly(rag, 360, 400)
    rag.close()


def test_a_call_larger_than_the_library_keeps_its_newest(rng):
    vectors = clustered_vectors(rng, 900, clusters=900)
    rag = PatternRAG(128, 256, max_patterns=200, k=1)
    rag.update_pattern_library(make_patterns(vectors[:150]))
    rag.update_pattern_library(make_patterns(vectors[150:650], first_id=150))  # 500 > 200: the newest 200
    np.testing.assert_array_equal(live_ids(rag), np.arange(450, 650))
    assert_index_holds_exactly(rag, 450, 650)
    for start in range(650, 900, 50):  # and online updates go on from there
        rag.update_pattern_library(make_patterns(vectors[start : start + 50], first_id=start))
    np.testing.assert_array_equal(live_ids(rag), np.arange(700, 900))
    assert_index_holds_exactly(rag, 700, 900)
    top = ids_of(rag.retrieve(torch.from_numpy(vectors), timeout_ms=2_000))[:, 0]
    np.testing.assert_array_equal(top[700:], np.arange(700, 900))
    rag.close()


def test_point_in_time_after_the_ring_wraps(rng):
    """Rows are reused several times over: the filter still uses each entry's own outcome time."""
    vectors = clustered_vectors(rng, 3_000, clusters=20)
    patterns = make_patterns(vectors)
    rag = PatternRAG(128, 256, max_patterns=1_000)
    for start in range(0, 3_000, 250):
        rag.update_pattern_library(patterns[start : start + 250])
    idx = np.array([2_100, 2_500, 2_999])
    windows = np.array([[patterns[i].start_ns, patterns[i].end_ns] for i in idx])
    r = rag.retrieve(torch.from_numpy(vectors[idx]), timeout_ms=5_000, query_windows=windows)
    outcome_end = np.array([p.outcome_end_ns for p in patterns])
    for row, i in enumerate(idx):
        eligible = np.flatnonzero(outcome_end <= windows[row, 0])
        eligible = eligible[eligible >= 2_000]  # only the live ones can come back
        got = ids_of(r)[row]
        assert np.all(np.isin(got, eligible)) and i not in got
        exact = eligible[brute_force_knn(vectors[eligible], vectors[i : i + 1], 10)[0]]
        assert set(got) == set(exact)
    rag.close()


def test_saved_library_depends_only_on_the_insertion_order(rng, tmp_path):
    """Same entries, same order: byte-identical files, whatever the split into calls; a copy loaded from a save
    answers the same and, after the same further updates, saves the same bytes as the original."""
    vectors = clustered_vectors(rng, 2_000)
    patterns = make_patterns(vectors)
    a = PatternRAG(128, 256, max_patterns=400)
    for start in range(0, 1_500, 100):
        a.update_pattern_library(patterns[start : start + 100])
    b = PatternRAG(128, 256, max_patterns=400)
    cuts = [0, 1, 2, 50, 333, 334, 700, 701, 1_100, 1_500]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        b.update_pattern_library(patterns[lo:hi])
    assert saved_bytes(a, tmp_path / "a") == saved_bytes(b, tmp_path / "b")
    twin = PatternRAG(128, 256, max_patterns=400)
    twin.load_state_dict(a.state_dict())
    twin.load_library(tmp_path / "a")
    q = torch.from_numpy(vectors[1_100:1_500:7] + 0.02)
    ra, rt = a.retrieve(q, timeout_ms=5_000), twin.retrieve(q, timeout_ms=5_000)
    np.testing.assert_array_equal(ids_of(ra), ids_of(rt))
    np.testing.assert_array_equal(ra.similarity, rt.similarity)
    for start in range(1_500, 2_000, 90):
        for r in (a, twin):
            r.update_pattern_library(patterns[start : start + 90])
    assert saved_bytes(a, tmp_path / "c") == saved_bytes(twin, tmp_path / "d")
    for r in (a, b, twin):
        r.close()


def test_clear_library(rng):
    vectors = clustered_vectors(rng, 400)
    rag = PatternRAG(128, 256, max_patterns=200)
    rag.update_pattern_library(make_patterns(vectors[:320]))
    rag.clear_library()
    assert rag.size == 0 and rag.retrieve(torch.from_numpy(vectors[:2])).status == "empty"
    rag.update_pattern_library(make_patterns(vectors[320:], first_id=320))
    np.testing.assert_array_equal(live_ids(rag), np.arange(320, 400))
    assert_index_holds_exactly(rag, 0, 80)  # entry numbers start again at 0
    rag.close()


def test_load_refuses_a_library_of_format_1(rng, tmp_path):
    rag = PatternRAG(128, 256, max_patterns=100)
    rag.update_pattern_library(make_patterns(clustered_vectors(rng, 50)))
    rag.save_library(tmp_path)
    with np.load(tmp_path / "patterns.npz") as z:
        meta = {key: z[key] for key in z.files if key not in ("library_format", "unit")}
    np.savez(tmp_path / "patterns.npz", **meta)  # as written before format 2
    with pytest.raises(ValueError, match="format 1.*rebuild"):
        PatternRAG(128, 256, max_patterns=100).load_library(tmp_path)
    rag.close()


def test_loads_the_hnsw_format_2(rng, tmp_path):
    """Format 2 (the shipped model's): an HNSW index holds the unit vectors (labels = entry numbers, evicted ones
    marked deleted) beside the metadata. It loads into the same library as the one the same updates build."""
    vectors = clustered_vectors(rng, 700)
    rag = PatternRAG(128, 256, max_patterns=500)
    rag.update_pattern_library(make_patterns(vectors))  # 200 evicted
    rag.save_library(tmp_path / "3")
    with np.load(tmp_path / "3" / "patterns.npz") as z:
        meta = {key: z[key] for key in z.files if key != "unit"}
    index = hnswlib.Index(space="cosine", dim=128)
    index.init_index(max_elements=1_000, M=16, ef_construction=200, random_seed=0)
    index.add_items(vectors, np.arange(700), num_threads=1)
    for label in range(200):
        index.mark_deleted(label)
    (tmp_path / "2").mkdir()
    index.save_index(str(tmp_path / "2" / "patterns.hnsw"))
    np.savez(tmp_path / "2" / "patterns.npz", **(meta | {"library_format": 2, "swap_at": -1}))
    old = PatternRAG(128, 256, max_patterns=500)
    old.load_library(tmp_path / "2")
    np.testing.assert_array_equal(old._unit, rag._unit)
    assert_index_holds_exactly(old, 200, 700)
    assert saved_bytes(old, tmp_path / "re") == saved_bytes(rag, tmp_path / "3")
    old.save_library(tmp_path / "2")  # saved over itself: format 3, the index it no longer reads goes
    assert [p.name for p in (tmp_path / "2").iterdir()] == ["patterns.npz"]
    for r in (rag, old):
        r.close()
