"""The pattern library: the k nearest stored patterns of a query and their known outcomes (exact search with hnswlib's
brute-force index + numpy, no torch; the torch head that turns them into a context is conditioning/rag.py).

Search. Exact k-NN in cosine space (``d = 1 - cos``; the pattern vectors are z-scored shapes, so direction
matters and scale does not) over the live entries: an ``hnswlib.BFIndex`` in inner-product space holding unit
vectors, queried with unit vectors. Both are normalised by :func:`unit_vectors`, a bit-exact copy of hnswlib's
own ``normalize_vector``, and the distances come from hnswlib's SIMD inner product, so every distance is the one
an hnswlib HNSW index over the same patterns reports; ties are broken by entry number, as there.

Why exact, not HNSW (docs/models.md, "Pattern library: exact search"): the pipeline adds one pattern and asks
one query per bar. An exact query over N = 10k entries costs ~0.27 ms (N dot products of 128 floats) and an
insert ~2 us; an HNSW insert at ``M = 16``, ``ef_construction = 200`` cost ~0.35 ms and, with the rebuilds an
evicting index needs (mark_deleted keeps the space; a full rebuild every N/2 inserts), ~0.9 ms a pattern
amortised, for a query of ~0.13 ms whose recall@10 on the pipeline's own queries was 0.88 (flat distance
profiles: all 10 found for 46% of bars). Exact costs linearly in N: past ~30k entries an HNSW index would again
be cheaper per bar.

Library. The newest ``max_patterns`` (N) entries. Entry number ``e`` (0, 1, 2, ... in insertion order, never
reused) is its label in the index; its metadata (outcome, window, unit vector) lives in row ``e % N`` of ring
arrays, so the live entries ``[total - N, total)`` occupy distinct rows and ``Retrieval.labels`` are rows.
An update deletes the entries it evicts from the index (``delete_vector``: the last slot moves into the hole)
and adds the new ones; the index then holds exactly the live entries, whatever the order of the calls.

Point in time. An entry is added only once its outcome is known (``as_of_ns`` enforces it when given). A
query with a window ``[start_ns, end_ns)`` uses only entries whose outcome was known before the window
started, ``outcome_end_ns <= start_ns``: this excludes entries overlapping the window (embargo) and, in a
backtest over a full-history library, every later entry. When few entries are eligible (``EXACT_MAX``) they are
searched with numpy over the ``_unit`` copies; otherwise the nearest 4k are fetched and filtered, and a row left
with fewer than k is searched again over the eligible entries only, with an hnswlib filter.

Concurrency and deadline. hnswlib is not safe under concurrent ``add_items`` and ``knn_query``, so every
access to the index holds a readers-writer lock (queries share it, updates are exclusive, writers are
preferred over newly arriving readers); an update holds it for a few microseconds a pattern. Updates, loads
and saves are serialised by a second (writers') lock, so a save sees whole updates. A running C++ query cannot
be cancelled: queries run on a small worker pool and the caller waits for at most ``timeout_ms``. On a miss it
gets ``None`` (status ``timeout``) while the worker finishes and releases the lock itself, in a ``finally``; a
query still queued when its caller gives up never runs.

Saved format (``LIBRARY_FORMAT`` 3): ``patterns.npz``, the ring rows of the live entries (unit vector, outcome,
window, symbol) and ``total``. Format 2 (an HNSW index ``patterns.hnsw`` beside the metadata, which the shipped
model still has) loads too: its unit vectors are read from the index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hnswlib
import numpy as np

from conditioning.features.types import Pattern
from conditioning.rwlock import RWLock
from schemas.layout import OUTCOME_DIM
from schemas.records import RagStatus

OVERFETCH = 4
#: Up to this many eligible entries, the point-in-time fallback is an exact numpy search over them (an hnswlib
#: filter calls back into Python for every entry it visits, which is slow when few entries pass).
EXACT_MAX = 4_096
LIBRARY_FORMAT = 3
#: From this many query rows on, a search uses every core (:meth:`PatternLibrary._knn`).
PARALLEL_ROWS = 8


def unit_vectors(x: np.ndarray) -> np.ndarray:
    """``x [n, D]`` float32 -> ``x / |x|`` as hnswlib's ``normalize_vector`` computes it, bit for bit: the float32
    sum of squares accumulated in index order, then ``x * (1 / (sqrt(sum) + 1e-30))``."""
    x = np.asarray(x, dtype=np.float32)
    sum_sq = np.zeros(len(x), dtype=np.float32)
    for column in x.T:  # in order: a pairwise or blocked sum would round differently
        sum_sq += column * column
    return x * (np.float32(1.0) / (np.sqrt(sum_sq) + np.float32(1e-30)))[:, None]


def _known_by(outcome_end_ns: np.ndarray, start_ns: int, label: int) -> bool:
    """hnswlib filter: the entry's outcome was known when the query window started (label -> ring row)."""
    return bool(outcome_end_ns[label % len(outcome_end_ns)] <= start_ns)


def _distinct_rows(query: np.ndarray, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``query [B, D]`` (with their window start) that first show each distinct value, and for every row
    the position of its value among those: ``first [U]``, ``inverse [B]`` with ``query[first][inverse] == query``."""
    seen: dict[bytes, int] = {}
    inverse = np.array(
        [
            seen.setdefault(query[i].tobytes() + (b"" if starts is None else starts[i].tobytes()), len(seen))
            for i in range(len(query))
        ],
        dtype=np.int64,
    )
    first = np.unique(inverse, return_index=True)[1]
    return first, inverse


@dataclass(frozen=True)
class Retrieval:
    """Outcome of one batched query. Arrays are ``None`` unless ``status == "ok"``."""

    status: RagStatus
    labels: np.ndarray | None = None  # [B, k] int64 library rows (entry % max_patterns), -1 where no neighbour
    similarity: np.ndarray | None = None  # [B, k] float32 cosine similarity, 0 where invalid
    outcomes: np.ndarray | None = None  # [B, k, OUTCOME_DIM] float32, raw units
    error: BaseException | None = None

    @property
    def valid(self) -> np.ndarray:  # [B, k] bool
        assert self.labels is not None, f"a {self.status!r} retrieval has no neighbours"
        return np.greater_equal(self.labels, 0)


class PatternLibrary:
    """The newest ``max_patterns`` patterns, searched exactly and point in time within a deadline."""

    def __init__(self, pattern_dim: int, *, max_patterns: int = 10_000, k: int = 10, workers: int = 2):
        for name, value in (
            ("pattern_dim", pattern_dim),
            ("max_patterns", max_patterns),
            ("k", k),
            ("workers", workers),
        ):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        self.pattern_dim = pattern_dim
        self.max_patterns, self.k = max_patterns, k
        self._lock = RWLock()
        self._update_lock = threading.Lock()  # one mutator (update, clear, load) or save at a time
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_guard = threading.Lock()
        self._reset_library()

    # ------------------------------------------------------------------ library (writers)
    def _reset_library(self) -> None:
        n = self.max_patterns
        self._index = hnswlib.BFIndex(space="ip", dim=self.pattern_dim)  # unit vectors: 1 - ip is the cosine distance
        self._index.init_index(max_elements=n)
        self._total = 0  # entries ever added = the next entry number; entry e lives in row e % max_patterns
        self._symbol = np.zeros(n, dtype=object)
        self._start_ns = np.zeros(n, dtype=np.int64)
        self._end_ns = np.zeros(n, dtype=np.int64)
        self._outcome_end_ns = np.zeros(n, dtype=np.int64)
        self._outcome = np.zeros((n, OUTCOME_DIM), dtype=np.float32)
        self._unit = np.zeros((n, self.pattern_dim), dtype=np.float32)  # the index's unit vectors, for numpy search
        self._outcome_mean = np.zeros(OUTCOME_DIM, dtype=np.float32)
        self._outcome_std = np.ones(OUTCOME_DIM, dtype=np.float32)

    def clear_library(self) -> None:
        """Empty the library (an exclusive update: running queries finish first)."""
        with self._update_lock, self._lock.write():
            self._reset_library()

    @property
    def size(self) -> int:
        """Live entries in the library."""
        return min(self._total, self.max_patterns)

    def _live(self) -> np.ndarray:
        """Entry numbers of the live entries, oldest first: ``[size]`` int64."""
        return np.arange(self._total - self.size, self._total, dtype=np.int64)

    def _check(self, p: Pattern, as_of_ns: int | None) -> None:
        v, o = np.asarray(p.vector), np.asarray(p.outcome)
        if v.shape != (self.pattern_dim,) or not np.all(np.isfinite(v)) or not np.any(v):
            raise ValueError(
                f"pattern {p.symbol}@{p.start_ns}: vector must be {self.pattern_dim} finite "
                f"values, not all zero (cosine space), got shape {v.shape}"
            )
        if o.shape != (OUTCOME_DIM,) or not np.all(np.isfinite(o)):
            raise ValueError(f"pattern {p.symbol}@{p.start_ns}: outcome must be {OUTCOME_DIM} finite values, got {o!r}")
        if not p.start_ns < p.end_ns <= p.outcome_end_ns:
            raise ValueError(
                f"pattern {p.symbol}: need start_ns < end_ns <= outcome_end_ns, got "
                f"{p.start_ns}, {p.end_ns}, {p.outcome_end_ns}"
            )
        if as_of_ns is not None and p.outcome_end_ns > as_of_ns:
            raise ValueError(
                f"pattern {p.symbol}@{p.start_ns}: outcome known at {p.outcome_end_ns} ns, "
                f"after as_of_ns={as_of_ns}: adding it would look ahead"
            )

    def update_pattern_library(self, patterns: Sequence[Pattern], *, as_of_ns: int | None = None) -> None:
        """Add patterns (oldest first); beyond ``max_patterns`` the oldest entries are evicted.

        All patterns are validated before any is added, so a bad one leaves the library untouched. The update
        is applied whole under the exclusive lock (microseconds a pattern): queries see all of it or none.
        """
        for p in patterns:
            self._check(p, as_of_ns)
        patterns = list(patterns)
        if not patterns:
            return
        n_max = self.max_patterns
        skipped = max(0, len(patterns) - n_max)  # evicted within this call: never stored
        patterns = patterns[skipped:]
        unit = unit_vectors(np.stack([np.asarray(p.vector, dtype=np.float32) for p in patterns]))  # [n, D]
        with self._update_lock:
            labels = self._total + skipped + np.arange(len(patterns), dtype=np.int64)  # [n] entry numbers
            evicted = range(self._total - self.size, min(self._total, int(labels[-1]) + 1 - n_max))
            with self._lock.write():
                for label in evicted:
                    self._index.delete_vector(label)
                self._index.add_items(unit, labels)
                self._set_rows(labels % n_max, patterns, unit)
                self._total = int(labels[-1]) + 1
                self._refresh_outcome_stats()

    def _set_rows(self, rows: np.ndarray, patterns: list[Pattern], unit: np.ndarray) -> None:
        self._unit[rows] = unit
        self._symbol[rows] = [p.symbol for p in patterns]
        self._start_ns[rows] = [p.start_ns for p in patterns]
        self._end_ns[rows] = [p.end_ns for p in patterns]
        self._outcome_end_ns[rows] = [p.outcome_end_ns for p in patterns]
        self._outcome[rows] = np.stack([np.asarray(p.outcome, dtype=np.float32) for p in patterns])

    def _refresh_outcome_stats(self) -> None:
        if not self.size:
            return
        live = self._outcome[: self.size]  # [N, OUTCOME_DIM]
        self._outcome_mean = live.mean(axis=0)
        self._outcome_std = np.maximum(live.std(axis=0), 1e-8).astype(np.float32)

    def save_library(self, directory: str | Path) -> None:
        """Write ``patterns.npz``: the live entries' ring rows (unit vectors and metadata) and ``total``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # a format-2 index left there would never be read again, but a model's manifest would vouch for it
        (directory / "patterns.hnsw").unlink(missing_ok=True)
        with self._update_lock:  # whole updates only; queries go on
            n = self.size
            np.savez(
                directory / "patterns.npz",
                library_format=LIBRARY_FORMAT,
                pattern_dim=self.pattern_dim,
                max_patterns=self.max_patterns,
                total=self._total,
                unit=self._unit[:n],
                symbol=self._symbol[:n].astype(str),
                start_ns=self._start_ns[:n],
                end_ns=self._end_ns[:n],
                outcome_end_ns=self._outcome_end_ns[:n],
                outcome=self._outcome[:n],
            )

    def _saved_units(self, directory: Path, meta: dict, live: np.ndarray) -> np.ndarray:
        """The saved unit vectors in row order: ``[n, D]``; format 2 keeps them in its HNSW index only."""
        if "unit" in meta:
            return meta["unit"]
        index = hnswlib.Index(space="cosine", dim=self.pattern_dim)
        index.load_index(str(directory / "patterns.hnsw"))
        try:
            unit = np.asarray(index.get_items(live), dtype=np.float32)  # [n, D] in entry order, as stored
        except RuntimeError as err:
            raise ValueError(
                f"pattern library at {directory} is inconsistent: the index lacks live entries of the metadata ({err})"
            ) from err
        rows = np.empty_like(unit)
        rows[live % self.max_patterns] = unit
        return rows

    def load_library(self, directory: str | Path) -> None:
        """Replace the library with one written by ``save_library`` (format 3) or the HNSW format 2; refuses
        another dimension or capacity, and format 1 (rebuild it: ``make model`` / ``hrmcond build-patterns``)."""
        directory = Path(directory)
        with np.load(directory / "patterns.npz", allow_pickle=False) as z:
            meta = {key: z[key] for key in z.files}
        found = int(meta["library_format"]) if "library_format" in meta else 1
        if found not in (2, LIBRARY_FORMAT):
            raise ValueError(
                f"pattern library at {directory} has format {found}, this {type(self).__name__} reads 2 and "
                f"{LIBRARY_FORMAT}: rebuild it (make model, or hrmcond build-patterns)"
            )
        for key in ("pattern_dim", "max_patterns"):
            if int(meta[key]) != getattr(self, key):
                raise ValueError(
                    f"pattern library at {directory} has {key}={int(meta[key])}, this "
                    f"{type(self).__name__} has {getattr(self, key)}"
                )
        n, total = len(meta["start_ns"]), int(meta["total"])
        if n != min(total, self.max_patterns):
            raise ValueError(f"pattern library at {directory} is inconsistent: {n} live entries of {total}")
        live = np.arange(total - n, total, dtype=np.int64)
        unit = self._saved_units(directory, meta, live)  # [n, D] rows
        if unit.shape != (n, self.pattern_dim):
            raise ValueError(f"pattern library at {directory} is inconsistent: unit vectors of shape {unit.shape}")
        with self._update_lock, self._lock.write():
            self._reset_library()
            self._total = total
            self._unit[:n], self._symbol[:n] = unit, meta["symbol"]  # saved in row order
            for key in ("start_ns", "end_ns", "outcome_end_ns", "outcome"):
                getattr(self, f"_{key}")[:n] = meta[key]
            self._index.add_items(self._unit[live % self.max_patterns], live)
            self._refresh_outcome_stats()

    # ------------------------------------------------------------------ queries (readers)
    def _knn(self, query: np.ndarray, k: int, filter=None) -> tuple[np.ndarray, np.ndarray]:
        """The one call into hnswlib's search, ``query`` unit rows; the read lock is held. (A seam for tests that
        slow it down.) A batch is spread over every core (rows are searched independently, so the answers are
        the same): an exact scan costs ~0.3 ms a row, and a batch of bars that close together must fit the
        deadline. A filtered search calls back into Python for each entry, so it stays on one thread."""
        threads = 1 if filter is not None or len(query) < PARALLEL_ROWS else -1
        return self._index.knn_query(query, k=k, num_threads=threads, filter=filter)

    def _search(self, query: np.ndarray, starts: np.ndarray | None, deadline: float) -> Retrieval:
        if not self._lock.acquire_read(timeout=max(0.0, deadline - time.monotonic())):
            return Retrieval("timeout")  # a writer held the index past the deadline; the caller has gone
        try:
            n = self.size
            if n == 0:
                return Retrieval("empty")
            k = min(self.k, n)
            unit = unit_vectors(query)
            if starts is None:
                labels, dist = self._knn(unit, k)  # [B, k]
                labels = labels.astype(np.int64) % self.max_patterns  # entry numbers -> rows
            else:
                labels, dist = self._point_in_time(query, unit, starts, k, n)
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

    def _point_in_time(self, query, unit, starts, k, n):
        """Per row, the k nearest entries known when its window started (``outcome_end_ns <= start_ns``), padded with
        -1: rows [B, k], distances [B, k]. ``unit``: the rows as the index reads them. Few eligible: numpy over
        them; else the nearest 4k of the index, filtered, and where that leaves fewer than k, a search of the
        index over the eligible only."""
        eligible = np.count_nonzero(self._outcome_end_ns[:n] <= starts[:, None], axis=1)  # [B]
        out_l = np.full((len(query), k), -1, dtype=np.int64)
        out_d = np.ones((len(query), k), dtype=np.float32)
        many = np.flatnonzero(eligible > EXACT_MAX)
        if len(many):
            labels, dist = self._knn(unit[many], min(n, k * OVERFETCH))  # [M, kf]
            labels = labels.astype(np.int64) % self.max_patterns  # entry numbers -> rows
            ok = self._outcome_end_ns[labels] <= starts[many, None]  # [M, kf]
        for i in range(len(query)):
            want = min(k, int(eligible[i]))
            if eligible[i] <= EXACT_MAX:
                keep_l, keep_d = self._exact_known(query[i], int(starts[i]), want, n)
            else:
                j = int(np.searchsorted(many, i))
                keep_l, keep_d = labels[j, ok[j]][:k], dist[j, ok[j]][:k]
            if len(keep_l) < want:  # the nearest 4k were mostly too recent
                known = partial(_known_by, self._outcome_end_ns, int(starts[i]))
                keep_l, keep_d = self._knn(unit[i : i + 1], want, known)
                keep_l, keep_d = keep_l[0].astype(np.int64) % self.max_patterns, keep_d[0]
            out_l[i, : len(keep_l)], out_d[i, : len(keep_d)] = keep_l, keep_d
        return out_l, out_d

    def _exact_known(self, query: np.ndarray, start_ns: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine k-NN among the entries known by ``start_ns``: rows ``[k]`` int64, distances ``[k]``."""
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

    def search(self, query: np.ndarray, timeout_ms: float = 60, query_windows: np.ndarray | None = None) -> Retrieval:
        """k nearest valid neighbours of each query, or a failed ``Retrieval`` (timeout/empty/error).

        ``query [B, pattern_dim]`` float32, a copy the search may keep (a timed-out worker outlives the call);
        ``query_windows [B, 2]`` int64 ``(start_ns, end_ns)`` of each query's window enables the point-in-time
        filter. Bad input raises ``ValueError``; index failures
        never raise (status ``error`` with the cause).
        """
        if query.ndim != 2 or query.shape[1] != self.pattern_dim:
            raise ValueError(f"query_features must be [B, {self.pattern_dim}], got {list(query.shape)}")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        starts = None
        if query_windows is not None:
            windows = np.asarray(query_windows, dtype=np.int64)
            if windows.shape != (query.shape[0], 2):
                raise ValueError(f"query_windows must be [{query.shape[0]}, 2], got {list(windows.shape)}")
            starts = windows[:, 0].copy()
        if not np.all(np.isfinite(query)):
            raise ValueError("query_features contain NaN or inf")
        deadline = time.monotonic() + timeout_ms / 1000.0
        # Each row is searched on its own, so a repeated (query, window start) is searched once: padded batches
        # repeat one row up to a fixed size (flows/contexts.py), e.g. 31 of 32 rows for a lone bar.
        first, inverse = _distinct_rows(query, starts)
        if len(first) < len(query):
            query, starts = query[first], None if starts is None else starts[first]
        future = self._executor().submit(self._search, query, starts, deadline)
        try:
            found = future.result(timeout=max(0.0, deadline - time.monotonic()))
            if found.status != "ok" or len(first) == len(inverse):
                return found
            assert found.labels is not None and found.similarity is not None and found.outcomes is not None
            return Retrieval(
                "ok",
                labels=found.labels[inverse],
                similarity=found.similarity[inverse],
                outcomes=found.outcomes[inverse],
            )
        except FutureTimeout:
            future.cancel()  # still queued: it never runs; running: it finishes and releases the lock itself
            return Retrieval("timeout")
        except Exception as err:  # hnswlib raised inside the worker: fail open, keep the cause
            return Retrieval("error", error=err)

    @property
    def querying(self) -> bool:
        """A query holds the index (between a caller's searches: one that timed out, its caller gone)."""
        return self._lock.reading

    def close(self) -> None:
        """Stop the worker pool (queued queries are dropped; a running one finishes)."""
        with self._pool_guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
