"""conditioning/ip_kernel.py against hnswlib itself: the distances of its AVX-512 kernel bit for bit, and the pattern
library's answers (neighbours and distances) against an hnswlib brute-force index over the same entries."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np
import pytest
import torch

from conditioning.ip_kernel import _fma32, ip_distances, unit_vectors
from conditioning.library import EXACT_MAX
from conditioning.rag import PatternRAG

from .conftest import clustered_vectors, make_patterns


def _avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _avx512(), reason="hnswlib picks its AVX-512 kernel only on a CPU with AVX-512 (elsewhere it rounds otherwise)"
)


def bf_index(vectors: np.ndarray, labels: np.ndarray) -> hnswlib.BFIndex:
    index = hnswlib.BFIndex(space="ip", dim=vectors.shape[1])  # ip: hnswlib computes 1 - a.b, no normalisation
    index.init_index(max_elements=len(vectors))
    index.add_items(vectors, labels)
    return index


def test_distances_are_the_kernel_s_bit_for_bit(rng):
    """Every pair of 200 queries x 3,000 entries: unit vectors, raw vectors over six orders of magnitude, zeros."""
    raw = (rng.standard_normal((3_000, 128)) ** 3 * rng.uniform(1e-3, 1e3, (3_000, 1))).astype(np.float32)
    entries = np.concatenate([unit_vectors(raw[:2_000]), raw[2_000:]])
    entries[5] = 0.0
    queries = np.concatenate([unit_vectors(rng.standard_normal((190, 128)).astype(np.float32)), raw[:10]])
    labels, dist = bf_index(entries, np.arange(len(entries))).knn_query(queries, k=len(entries), num_threads=1)
    ours = ip_distances(np.repeat(queries, len(entries), axis=0), entries[labels.ravel()]).reshape(labels.shape)
    assert np.array_equal(ours.view(np.int32), dist.view(np.int32))


def test_a_fused_multiply_add_rounds_once():
    """``acc = 1 + 2^-23`` and ``a b = 2^-24 - 2^-70``: the exact sum lies just below the halfway point
    ``1 + 2^-23 + 2^-24``, which is where its float64 rounding lands; rounding that again to float32 (ties to even)
    would give ``1 + 2^-22``, one fused rounding gives ``1 + 2^-23``. hnswlib agrees."""
    acc, a, b = 1 + 2.0**-23, (1 + 2.0**-23) * 2.0**-12, (1 - 2.0**-23) * 2.0**-12
    twice = np.float32(np.float64(a) * np.float64(b) + np.float64(acc))
    assert twice == np.float32(1 + 2.0**-22)  # what rounding twice gives
    once = _fma32(np.array([np.float64(a) * np.float64(b)]), np.array([acc], dtype=np.float32))
    assert once[0] == np.float32(acc)
    # In the kernel: lane 0 holds acc after the first 16 dimensions, then adds a * b (dimension 16).
    x, y = np.zeros((1, 32), np.float32), np.zeros((1, 32), np.float32)
    x[0, 0], y[0, 0], x[0, 16], y[0, 16] = acc, 1.0, a, b
    _, dist = bf_index(y, np.array([0])).knn_query(x, k=1, num_threads=1)
    assert ip_distances(x, y)[0] == dist[0, 0] == np.float32(1.0) - np.float32(acc)


def mirror(patterns, max_patterns: int) -> tuple[hnswlib.BFIndex, np.ndarray]:
    """An hnswlib brute-force index over the newest ``max_patterns`` patterns (labels: entry numbers) and their
    outcome times."""
    first = max(0, len(patterns) - max_patterns)
    unit = unit_vectors(np.stack([p.vector for p in patterns[first:]]))
    ends = np.array([p.outcome_end_ns for p in patterns[first:]])
    return bf_index(unit, np.arange(first, len(patterns))), ends


def assert_answers_as(index: hnswlib.BFIndex, labels, similarity, queries: np.ndarray, n_max: int) -> None:
    """A retrieval's ``labels`` and ``similarity`` ``[B, 10]`` of ``queries [B, D]`` are the neighbours (rows =
    entry % ``n_max``) and distances of ``index``, bit for bit."""
    want, dist = index.knn_query(unit_vectors(queries), k=10, num_threads=1)
    np.testing.assert_array_equal(labels, want.astype(np.int64) % n_max)
    assert np.array_equal(similarity, (1.0 - dist).astype(np.float32))


def test_search_answers_as_hnswlib_s_brute_force_index(rng):
    """Neighbours (rows = entry % max_patterns) and distances, bit for bit, after the ring has wrapped, with
    near-duplicates (ties broken by entry number), repeated and zero queries, with and without windows."""
    n_max = 6_000
    vectors = clustered_vectors(rng, 9_000, clusters=60)
    vectors[8_000:8_040] = vectors[8_500]  # 40 exact duplicates: equal distances
    patterns = make_patterns(vectors)
    rag = PatternRAG(128, 256, max_patterns=n_max)
    for start in range(0, len(patterns), 700):
        rag.update_pattern_library(patterns[start : start + 700])
    index, ends = mirror(patterns, n_max)
    first = len(patterns) - n_max
    queries = vectors[first + rng.integers(0, n_max, 120)] + 0.05 * rng.standard_normal((120, 128)).astype(np.float32)
    queries[:3] = vectors[8_500]
    queries[3:5] = 0.0
    got = rag.retrieve(torch.from_numpy(queries), timeout_ms=10_000)
    assert_answers_as(index, got.labels, got.similarity, queries, n_max)
    few = rag.retrieve(torch.from_numpy(queries[5:8]), timeout_ms=10_000)  # under SMALL_ROWS: the partition path
    np.testing.assert_array_equal(few.labels, got.labels[5:8])
    assert np.array_equal(few.similarity, got.similarity[5:8])
    # Point in time with more than EXACT_MAX eligible: against an index over the eligible entries only.
    starts = patterns[first + EXACT_MAX + 500].start_ns + rng.integers(0, 1_000, len(queries)) * 60_000_000_000
    windows = np.stack([starts, starts + 1], axis=1)
    got = rag.retrieve(torch.from_numpy(queries), timeout_ms=10_000, query_windows=windows)
    for i in range(len(queries)):
        known = np.flatnonzero(ends <= starts[i])
        assert len(known) > EXACT_MAX
        only = bf_index(unit_vectors(np.stack([patterns[first + j].vector for j in known])), first + known)
        assert_answers_as(only, got.labels[i : i + 1], got.similarity[i : i + 1], queries[i : i + 1], n_max)
    rag.close()


def test_a_library_of_fewer_blocks_than_k_answers_as_hnswlib(rng):
    """300 entries are 5 blocks of 64 (conditioning/library.py): fewer than k = 10, so each row's own k-th is used."""
    vectors = clustered_vectors(rng, 300, clusters=5)
    patterns = make_patterns(vectors)
    rag = PatternRAG(128, 256, max_patterns=300)
    rag.update_pattern_library(patterns)
    index, _ = mirror(patterns, 300)
    queries = vectors[:40] + 0.1 * rng.standard_normal((40, 128)).astype(np.float32)
    got = rag.retrieve(torch.from_numpy(queries), timeout_ms=10_000)
    assert_answers_as(index, got.labels, got.similarity, queries, 300)
    rag.close()
