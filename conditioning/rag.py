"""Pattern retrieval: the k nearest library patterns of a query and their known outcomes -> a context.

Index. hnswlib HNSW, cosine space (``d = 1 - cos``; the pattern vectors are z-scored shapes, so direction
matters and scale does not), ``M = 16`` links per node, ``ef_construction = 200``, ``ef = 64`` at query
time (``ef`` is not saved by hnswlib and is set again on load). Measured on 128-d clustered data: 10k
vectors, recall@10 = 1.0 at ~25 us per query (docs/REFERENCE.md); tests/models/test_rag.py checks
recall@10 >= 0.95 against brute force.

Library. Up to ``max_patterns`` entries in a ring of slots: the hnswlib label *is* the slot, entry number
``s`` goes to slot ``s % max_patterns``, so the oldest entry (in insertion order) is the one overwritten.
Overwriting re-adds an existing label, which hnswlib turns into an in-place ``updatePoint`` (graph links
repaired); this avoids ``replace_deleted``, whose free-slot choice can erase the label lookup of another
entry when a batch deletes and re-adds several labels at once.

Point in time. An entry is added only once its outcome is known (``as_of_ns`` enforces it when given). A
query with a window ``[start_ns, end_ns)`` uses only entries whose outcome was known before the window
started, ``outcome_end_ns <= start_ns``: this excludes entries overlapping the window (embargo) and, in a
backtest over a full-history library, every later entry. Candidates are over-fetched (4k) and filtered; a
row left with fewer than k is searched again exactly with an hnswlib filter.

Context. Per query, with similarities ``s_i = 1 - d_i`` of the valid neighbours and weights ``w =
softmax(s / temperature)``: the weighted mean and weighted std of the standardised outcomes
(``OUTCOME_NAMES``; standardised by the live library's mean and std), the max and the mean similarity: 6
numbers -> ``Linear(6, 64) -> GELU -> Linear(64, context_dim)`` (17,088 parameters at 256). A row with no
valid neighbour gets a zero (neutral) context.

Concurrency and deadline. hnswlib is not safe under concurrent ``add_items`` and ``knn_query``, so every
index access holds a readers-writer lock (queries share it, updates are exclusive, writers are preferred).
A running C++ query cannot be cancelled: queries run on a small worker pool and the caller waits for at
most ``timeout_ms``. On a miss it gets ``None`` (status ``timeout``) while the worker finishes and
releases the lock itself, in a ``finally``; a query still queued when its caller gives up never runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import hnswlib
import numpy as np
import torch
from torch import Tensor, nn

from conditioning.features.types import OUTCOME_DIM, Pattern

RagStatus = Literal["ok", "timeout", "disabled", "empty", "error"]

OVERFETCH = 4
#: Up to this many eligible entries, the point-in-time fallback is an exact numpy search over them (an hnswlib
#: filter calls back into Python for every node it visits: ~4 ms a row on a 10k index when few entries pass).
EXACT_MAX = 4_096
SUMMARY_DIM = 2 * OUTCOME_DIM + 2
HEAD_HIDDEN = 64


def _known_by(outcome_end_ns: np.ndarray, start_ns: int, label: int) -> bool:
    """hnswlib filter: the entry's outcome was known when the query window started."""
    return bool(outcome_end_ns[label] <= start_ns)


class RWLock:
    """Readers-writer lock, writer-preferring (a stream of queries cannot starve an update), with timeouts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self, timeout: float | None = None) -> bool:
        with self._cond:
            ok = self._cond.wait_for(lambda: not self._writer and not self._writers_waiting, timeout)
            self._readers += ok
            return ok

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """No reader or writer holds the lock (for tests and health checks)."""
        with self._cond:
            return not self._readers and not self._writer


@dataclass(frozen=True)
class Retrieval:
    """Outcome of one batched query. Arrays are ``None`` unless ``status == "ok"``."""

    status: RagStatus
    labels: np.ndarray | None = None  # [B, k] int64 library slots, -1 where no valid neighbour
    similarity: np.ndarray | None = None  # [B, k] float32 cosine similarity, 0 where invalid
    outcomes: np.ndarray | None = None  # [B, k, OUTCOME_DIM] float32, raw units
    error: BaseException | None = None

    @property
    def valid(self) -> np.ndarray:  # [B, k] bool
        return self.labels >= 0


class PatternRAG(nn.Module):
    def __init__(
        self,
        pattern_dim: int,
        context_dim: int,
        *,
        max_patterns: int = 10_000,
        k: int = 10,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        temperature: float = 0.05,
        workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("pattern_dim", pattern_dim), ("context_dim", context_dim),
                            ("max_patterns", max_patterns), ("k", k), ("workers", workers)):
            if value < 1:
                raise ValueError(f"PatternRAG: {name} must be >= 1, got {value}")
        if temperature <= 0:
            raise ValueError(f"PatternRAG: temperature must be > 0, got {temperature}")
        self.pattern_dim, self.context_dim = pattern_dim, context_dim
        self.max_patterns, self.k = max_patterns, k
        self.temperature = temperature
        self._hnsw = {"M": m, "ef_construction": ef_construction, "random_seed": seed}
        self._ef = max(ef_search, OVERFETCH * k)
        self.head = nn.Sequential(
            nn.Linear(SUMMARY_DIM, HEAD_HIDDEN), nn.GELU(), nn.Linear(HEAD_HIDDEN, context_dim)
        )
        self._lock = RWLock()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_guard = threading.Lock()
        self._reset_library()

    # ------------------------------------------------------------------ library (writers)
    def _reset_library(self) -> None:
        self._index = hnswlib.Index(space="cosine", dim=self.pattern_dim)
        self._index.init_index(max_elements=self.max_patterns, **self._hnsw)
        self._index.set_ef(self._ef)
        n = self.max_patterns
        self._total = 0  # entries ever added; the next goes to slot _total % max_patterns
        self._symbol = np.zeros(n, dtype=object)
        self._start_ns = np.zeros(n, dtype=np.int64)
        self._end_ns = np.zeros(n, dtype=np.int64)
        self._outcome_end_ns = np.zeros(n, dtype=np.int64)
        self._outcome = np.zeros((n, OUTCOME_DIM), dtype=np.float32)
        self._unit = np.zeros((n, self.pattern_dim), dtype=np.float32)  # unit-norm copies, for exact search
        self._outcome_mean = np.zeros(OUTCOME_DIM, dtype=np.float32)
        self._outcome_std = np.ones(OUTCOME_DIM, dtype=np.float32)

    def clear_library(self) -> None:
        """Empty the library (an exclusive update: running queries finish first)."""
        with self._lock.write():
            self._reset_library()

    @property
    def size(self) -> int:
        """Live entries in the library."""
        return min(self._total, self.max_patterns)

    def _check(self, p: Pattern, as_of_ns: int | None) -> None:
        v, o = np.asarray(p.vector), np.asarray(p.outcome)
        if v.shape != (self.pattern_dim,) or not np.all(np.isfinite(v)) or not np.any(v):
            raise ValueError(f"pattern {p.symbol}@{p.start_ns}: vector must be {self.pattern_dim} finite "
                             f"values, not all zero (cosine space), got shape {v.shape}")
        if o.shape != (OUTCOME_DIM,) or not np.all(np.isfinite(o)):
            raise ValueError(f"pattern {p.symbol}@{p.start_ns}: outcome must be {OUTCOME_DIM} finite "
                             f"values, got {o!r}")
        if not p.start_ns < p.end_ns <= p.outcome_end_ns:
            raise ValueError(f"pattern {p.symbol}: need start_ns < end_ns <= outcome_end_ns, got "
                             f"{p.start_ns}, {p.end_ns}, {p.outcome_end_ns}")
        if as_of_ns is not None and p.outcome_end_ns > as_of_ns:
            raise ValueError(f"pattern {p.symbol}@{p.start_ns}: outcome known at {p.outcome_end_ns} ns, "
                             f"after as_of_ns={as_of_ns}: adding it would look ahead")

    def update_pattern_library(self, patterns: Sequence[Pattern], *, as_of_ns: int | None = None) -> None:
        """Add patterns (oldest first); beyond ``max_patterns`` the oldest entries are overwritten.

        All patterns are validated before any is added, so a bad one leaves the library untouched.
        """
        for p in patterns:
            self._check(p, as_of_ns)
        patterns = list(patterns)[-self.max_patterns:]  # earlier ones would be overwritten within this call
        if not patterns:
            return
        vectors = np.stack([np.asarray(p.vector, dtype=np.float32) for p in patterns])  # [n, D]
        with self._lock.write():
            slots = (self._total + np.arange(len(patterns))) % self.max_patterns  # [n]
            # One thread: the graph (and the saved index) is then a function of the insertion order alone.
            self._index.add_items(vectors, slots, num_threads=1)  # an existing label is updated in place
            self._unit[slots] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            self._symbol[slots] = [p.symbol for p in patterns]
            self._start_ns[slots] = [p.start_ns for p in patterns]
            self._end_ns[slots] = [p.end_ns for p in patterns]
            self._outcome_end_ns[slots] = [p.outcome_end_ns for p in patterns]
            self._outcome[slots] = np.stack([np.asarray(p.outcome, dtype=np.float32) for p in patterns])
            self._total += len(patterns)
            live = self._outcome[: self.size]  # [N, OUTCOME_DIM]
            self._outcome_mean = live.mean(axis=0)
            self._outcome_std = np.maximum(live.std(axis=0), 1e-8).astype(np.float32)

    def save_library(self, directory: str | Path) -> None:
        """Write ``patterns.hnsw`` (the hnswlib index) and ``patterns.npz`` (entry metadata)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not self._lock.acquire_read():
            raise RuntimeError("unreachable: untimed read lock")
        try:
            self._index.save_index(str(directory / "patterns.hnsw"))
            n = self.size
            np.savez(
                directory / "patterns.npz",
                pattern_dim=self.pattern_dim, max_patterns=self.max_patterns, total=self._total,
                symbol=self._symbol[:n].astype(str), start_ns=self._start_ns[:n], end_ns=self._end_ns[:n],
                outcome_end_ns=self._outcome_end_ns[:n], outcome=self._outcome[:n],
            )
        finally:
            self._lock.release_read()

    def load_library(self, directory: str | Path) -> None:
        """Replace the library with one written by ``save_library``; refuses another dimension or capacity."""
        directory = Path(directory)
        with np.load(directory / "patterns.npz", allow_pickle=False) as z:
            meta = {key: z[key] for key in z.files}
        for key in ("pattern_dim", "max_patterns"):
            if int(meta[key]) != getattr(self, key):
                raise ValueError(f"pattern library at {directory} has {key}={int(meta[key])}, this "
                                 f"PatternRAG has {getattr(self, key)}")
        index = hnswlib.Index(space="cosine", dim=self.pattern_dim)
        index.load_index(str(directory / "patterns.hnsw"), max_elements=self.max_patterns)
        index.set_ef(self._ef)
        n = len(meta["start_ns"])
        if index.get_current_count() != n:
            raise ValueError(f"pattern library at {directory} is inconsistent: index holds "
                             f"{index.get_current_count()} vectors, metadata {n}")
        with self._lock.write():
            self._reset_library()
            self._index, self._total = index, int(meta["total"])
            self._symbol[:n] = meta["symbol"]
            for key in ("start_ns", "end_ns", "outcome_end_ns", "outcome"):
                getattr(self, f"_{key}")[:n] = meta[key]
            if n:
                vectors = np.asarray(index.get_items(np.arange(n)), dtype=np.float32)  # [n, D]
                self._unit[:n] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            if n:
                self._outcome_mean = meta["outcome"].mean(axis=0)
                self._outcome_std = np.maximum(meta["outcome"].std(axis=0), 1e-8).astype(np.float32)

    # ------------------------------------------------------------------ queries (readers)
    def _knn(self, query: np.ndarray, k: int, filter=None) -> tuple[np.ndarray, np.ndarray]:
        """The one call into hnswlib's search; the read lock is held. (A seam for tests that slow it down.)"""
        return self._index.knn_query(query, k=k, num_threads=1, filter=filter)

    def _search(self, query: np.ndarray, starts: np.ndarray | None, deadline: float) -> Retrieval:
        if not self._lock.acquire_read(timeout=max(0.0, deadline - time.monotonic())):
            return Retrieval("timeout")  # a writer held the index past the deadline; the caller has gone
        try:
            n = self.size
            if n == 0:
                return Retrieval("empty")
            k = min(self.k, n)
            labels, dist = self._knn(query, min(n, k * OVERFETCH) if starts is not None else k)  # [B, kf]
            labels = labels.astype(np.int64)
            if starts is not None:
                labels, dist = self._point_in_time(query, starts, labels, dist, k, n)
            labels, dist = labels[:, :k], dist[:, :k]
            valid = labels >= 0
            safe = np.where(valid, labels, 0)
            return Retrieval(
                "ok",
                labels=labels,
                similarity=np.where(valid, 1.0 - dist, 0.0).astype(np.float32),
                outcomes=np.where(valid[..., None], self._outcome[safe], 0.0).astype(np.float32),
            )
        finally:
            self._lock.release_read()

    def _point_in_time(self, query, starts, labels, dist, k, n):
        """Keep neighbours with ``outcome_end_ns <= start_ns`` of their query, padded with -1: [B, k] x 2."""
        ok = self._outcome_end_ns[labels] <= starts[:, None]  # [B, kf]
        out_l = np.full((len(query), k), -1, dtype=np.int64)
        out_d = np.ones((len(query), k), dtype=np.float32)
        for i in range(len(query)):
            keep_l, keep_d = labels[i, ok[i]][:k], dist[i, ok[i]][:k]
            eligible = int(np.count_nonzero(self._outcome_end_ns[:n] <= starts[i]))
            if len(keep_l) < min(k, eligible) and eligible <= EXACT_MAX:  # over-fetch fell short, few are eligible
                keep_l, keep_d = self._exact_known(query[i], int(starts[i]), min(k, eligible), n)
            elif len(keep_l) < min(k, eligible):  # over-fetch was not enough: filtered graph search
                known = partial(_known_by, self._outcome_end_ns, int(starts[i]))
                keep_l, keep_d = self._knn(query[i : i + 1], min(k, eligible), known)
                keep_l, keep_d = keep_l[0].astype(np.int64), keep_d[0]
            out_l[i, : len(keep_l)], out_d[i, : len(keep_d)] = keep_l, keep_d
        return out_l, out_d

    def _exact_known(self, query: np.ndarray, start_ns: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine k-NN among the entries known by ``start_ns``: labels ``[k]`` int64, distances ``[k]``."""
        labels = np.flatnonzero(self._outcome_end_ns[:n] <= start_ns)  # [E]
        norm = float(np.linalg.norm(query))
        dist = 1.0 - self._unit[labels] @ (query / norm if norm > 0 else query)  # [E]
        order = np.argsort(dist, kind="stable")[:k]
        return labels[order].astype(np.int64), dist[order].astype(np.float32)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_guard:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="pattern-rag")
            return self._pool

    def retrieve(self, query_features: Tensor, timeout_ms: float = 60,
                 query_windows: Tensor | np.ndarray | None = None) -> Retrieval:
        """k nearest valid neighbours of each query, or a failed ``Retrieval`` (timeout/empty/error).

        ``query_features [B, pattern_dim]``; ``query_windows [B, 2]`` int64 ``(start_ns, end_ns)`` of each
        query's window enables the point-in-time filter. Bad input raises ``ValueError``; index failures
        never raise (status ``error`` with the cause).
        """
        if query_features.ndim != 2 or query_features.shape[1] != self.pattern_dim:
            raise ValueError(f"query_features must be [B, {self.pattern_dim}], "
                             f"got {list(query_features.shape)}")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        starts = None
        if query_windows is not None:
            windows = np.asarray(query_windows, dtype=np.int64)
            if windows.shape != (query_features.shape[0], 2):
                raise ValueError(f"query_windows must be [{query_features.shape[0]}, 2], "
                                 f"got {list(windows.shape)}")
            starts = windows[:, 0].copy()
        query = query_features.detach().to("cpu", torch.float32).numpy().copy()  # the worker may outlive us
        if not np.all(np.isfinite(query)):
            raise ValueError("query_features contain NaN or inf")
        deadline = time.monotonic() + timeout_ms / 1000.0
        future = self._executor().submit(self._search, query, starts, deadline)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # still queued: it never runs; running: it finishes and releases the lock itself
            return Retrieval("timeout")
        except Exception as err:  # hnswlib raised inside the worker: fail open, keep the cause
            return Retrieval("error", error=err)

    def project(self, retrieval: Retrieval) -> Tensor:
        """An ``ok`` retrieval -> context ``[B, context_dim]``; zero rows where a query has no valid neighbour."""
        if retrieval.status != "ok":
            raise ValueError(f"cannot project a retrieval with status {retrieval.status!r}")
        valid = retrieval.valid  # [B, k]
        logits = np.where(valid, retrieval.similarity / self.temperature, -np.inf)
        has_any = valid.any(axis=1)  # [B]
        logits[~has_any] = 0.0
        w = np.exp(logits - logits.max(axis=1, keepdims=True))  # [B, k]
        w /= w.sum(axis=1, keepdims=True)
        z = (retrieval.outcomes - self._outcome_mean) / self._outcome_std  # [B, k, O]
        mean = np.einsum("bk,bko->bo", w, z)  # [B, O]
        std = np.sqrt(np.maximum(np.einsum("bk,bko->bo", w, (z - mean[:, None]) ** 2), 0.0))  # [B, O]
        sim = retrieval.similarity
        n_valid = np.maximum(valid.sum(axis=1), 1)
        summary = np.concatenate(
            [mean, std, sim.max(axis=1, initial=0.0)[:, None], (sim.sum(axis=1) / n_valid)[:, None]], axis=1
        )  # [B, SUMMARY_DIM]
        ref = self.head[0].weight
        ctx = self.head(torch.as_tensor(summary, dtype=ref.dtype, device=ref.device))  # [B, C]
        return ctx * torch.as_tensor(has_any, device=ref.device).unsqueeze(1)

    def forward(self, query_features: Tensor, timeout_ms: int = 60,
                query_windows: Tensor | np.ndarray | None = None) -> Tensor | None:
        """``[B, pattern_dim]`` -> ``[B, context_dim]``, or ``None`` (fail-open: timeout, empty, error)."""
        retrieval = self.retrieve(query_features, timeout_ms, query_windows)
        return self.project(retrieval) if retrieval.status == "ok" else None

    def close(self) -> None:
        """Stop the worker pool (queued queries are dropped; a running one finishes)."""
        with self._pool_guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
