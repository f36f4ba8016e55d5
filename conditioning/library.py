"""The pattern library: the k nearest stored patterns of a query and their known outcomes (hnswlib + numpy, no torch;
the torch head that turns them into a context is conditioning/rag.py).

Index. hnswlib HNSW, cosine space (``d = 1 - cos``; the pattern vectors are z-scored shapes, so direction
matters and scale does not), ``M = 16`` links per node, ``ef_construction = 200``, ``ef = 64`` at query
time (``ef`` is not saved by hnswlib and is set again on load); tests/conditioning/test_rag.py checks recall@10 >=
0.95 against brute force, also after many rounds of online updates and compactions (query times:
docs/models.md).

Library. The newest ``max_patterns`` (N) entries. Entry number ``e`` (0, 1, 2, ... in insertion order, never
reused) is its hnswlib label; its metadata (outcome, window, unit vector) lives in row ``e % N`` of ring
arrays, so the live entries ``[total - N, total)`` occupy distinct rows and ``Retrieval.labels`` are rows.
Adding entry ``e`` first evicts ``e - N`` with ``mark_deleted`` (hnswlib then never returns it) and then
inserts ``e`` fresh. The index has room for ``2N`` elements, deleted ones included; re-adding a label instead
(an in-place ``updatePoint``, graph repair) costs an order of magnitude more than a fresh insert at these
settings (docs/models.md, "Pattern library: online updates").

Compaction. When the index holds ``1.5N`` elements, a replacement is built on a background thread from the
entries that will be live when it is swapped in: the live entries from ``swap_at - N`` on (``swap_at`` is the
entry number at which the old index is full), then every entry added meanwhile, all in entry order. Queries
and updates go on against the old index while it builds; the update that reaches ``swap_at`` waits for the
builder (outside the write lock) and swaps the index under the write lock. The swap point and the builder's
input depend only on the entries added, never on timing, so the same entries in the same order give the same
index and a byte-identical saved library; deletes and inserts are interleaved entry by entry, so the result
does not depend on how the entries were split between calls either. One call with more than N patterns keeps
its newest N in a freshly built index (everything older would be evicted within the call).

Writes hold the exclusive lock for at most ``WRITE_CHUNK`` inserts at a time; a writer that releases the
lock lets the readers that were waiting in before it takes the lock again, so a long update cannot starve
queries (nor a stream of queries an update).

Point in time. An entry is added only once its outcome is known (``as_of_ns`` enforces it when given). A
query with a window ``[start_ns, end_ns)`` uses only entries whose outcome was known before the window
started, ``outcome_end_ns <= start_ns``: this excludes entries overlapping the window (embargo) and, in a
backtest over a full-history library, every later entry. Candidates are over-fetched (4k) and filtered; a
row left with fewer than k is searched again, exactly over the ``_unit`` copies when few entries are eligible,
else with an hnswlib filter.

Concurrency and deadline. hnswlib is not safe under concurrent ``add_items`` and ``knn_query``, so every
access to the live index holds a readers-writer lock (queries share it, updates are exclusive, writers are
preferred over newly arriving readers); the index being built is private to its builder until the swap.
Updates, loads and saves are serialised by a second (writers') lock, so a save sees whole updates. A running
C++ query cannot be cancelled: queries run on a small worker pool and the caller waits for at most
``timeout_ms``. On a miss it gets ``None`` (status ``timeout``) while the worker finishes and releases the
lock itself, in a ``finally``; a query still queued when its caller gives up never runs.

Saved format (``LIBRARY_FORMAT`` 2): ``patterns.hnsw`` (the live index, deleted elements included, labels =
entry numbers) and ``patterns.npz`` (rows of the ring, ``total``, and ``swap_at`` of a pending compaction,
which a loaded library resumes, so it continues exactly as the saved one would have).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
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
#: filter calls back into Python for every node it visits, which is slow when few entries pass).
EXACT_MAX = 4_096
#: Most inserts per hold of the exclusive lock: short enough that a waiting query keeps its deadline.
WRITE_CHUNK = 16
#: The compaction builder adds the base entries in pieces of this many, checking for cancellation in between.
BUILD_CHUNK = 256
LIBRARY_FORMAT = 2


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


def _stored(index: hnswlib.Index, labels: np.ndarray) -> np.ndarray:
    """The vectors ``index`` stores for ``labels`` (unit norm): ``[n, D]`` float32. Fetched in pieces:
    ``get_items`` holds the GIL for the whole call, and a whole library at once would stall every query thread."""
    parts = [index.get_items(labels[start : start + BUILD_CHUNK]) for start in range(0, len(labels), BUILD_CHUNK)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, index.dim), np.float32)


#: Compactions whose builder may be running. A daemon thread still inside hnswlib's C++ when the interpreter
#: finalises is unwound by pthread_exit and the process aborts ("terminate called without an active
#: exception"), so they are stopped at exit, while threads still run normally.
_BUILDERS: weakref.WeakSet[_Compaction] = weakref.WeakSet()


@atexit.register
def _stop_builders() -> None:
    builders = list(_BUILDERS)
    for compaction in builders:
        compaction.cancel()
    for compaction in builders:
        compaction.join(timeout=10.0)  # it stops after the piece it is adding


class _Compaction:
    """A replacement index built on a background thread from ``(labels, vectors)`` pieces, in the order fed.

    ``swap_at``: the entry number at which the update path swaps it in. The index is private to the builder
    until :meth:`finish` returns it, so building takes no lock. ``None`` from :meth:`finish` (the build failed
    or was cancelled) makes the caller build the same index itself.
    """

    def __init__(self, rag: PatternLibrary, swap_at: int, labels: np.ndarray, vectors: np.ndarray):
        self.swap_at = swap_at
        self._rag = rag
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._index: hnswlib.Index | None = None
        self._labels: list[np.ndarray] = []
        self._units: list[np.ndarray] = []  # the new index's stored (unit) vectors, fetched as it grows
        self.error: BaseException | None = None
        for start in range(0, len(labels), BUILD_CHUNK):
            self._queue.put((labels[start : start + BUILD_CHUNK], vectors[start : start + BUILD_CHUNK]))
        self._thread = threading.Thread(target=self._run, name="pattern-rag-compaction", daemon=True)
        _BUILDERS.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            index = self._rag._new_index()
            while (item := self._queue.get()) is not None:
                if self._cancel.is_set():
                    return
                self._rag._build_add(index, *item)
                self._labels.append(item[0])
                self._units.append(_stored(index, item[0]))
            self._index = index
        except BaseException as err:  # noqa: BLE001 - reported through finish(); the caller rebuilds
            self.error = err

    def feed(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._queue.put((labels, vectors))

    def finish(self) -> tuple[hnswlib.Index, np.ndarray, np.ndarray] | None:
        """Wait for the build: (index, labels [n], stored unit vectors [n, D]), or None."""
        self._queue.put(None)
        self._thread.join()
        if self._cancel.is_set() or self._index is None or not self._labels:
            return None
        return self._index, np.concatenate(self._labels), np.concatenate(self._units)

    def cancel(self) -> None:
        """Stop without waiting: the builder drops its private index after the piece it is adding."""
        self._cancel.set()
        self._queue.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def building(self) -> bool:
        return self._thread.is_alive()


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
    """The newest ``max_patterns`` patterns in an hnswlib index, searched point in time within a deadline."""

    def __init__(
        self,
        pattern_dim: int,
        *,
        max_patterns: int = 10_000,
        k: int = 10,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        workers: int = 2,
        seed: int = 0,
    ):
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
        self._hnsw = {"M": m, "ef_construction": ef_construction, "random_seed": seed}
        self._ef = max(ef_search, OVERFETCH * k)
        # Index room, deleted elements included: N live + N spare. A compaction starts when the spare is half
        # used, so its builder has N/2 online entries' time before the update path needs it.
        self._capacity = 2 * max_patterns
        self._compact_at = self._capacity - max(1, max_patterns // 2)
        self._lock = RWLock()
        self._update_lock = threading.Lock()  # one mutator (update, clear, load) or save at a time
        self._compaction: _Compaction | None = None
        self._compactions = 0  # swaps done (tests, benchmarks)
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_guard = threading.Lock()
        self._reset_library()

    # ------------------------------------------------------------------ library (writers)
    def _new_index(self) -> hnswlib.Index:
        index = hnswlib.Index(space="cosine", dim=self.pattern_dim)
        index.init_index(max_elements=self._capacity, **self._hnsw)
        index.set_ef(self._ef)
        return index

    def _build_add(self, index: hnswlib.Index, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Add entries to an index being built (no lock: nobody else sees it). A seam for tests."""
        # One thread: the graph (and the saved index) is then a function of the insertion order alone.
        index.add_items(vectors, labels, num_threads=1)

    def _reset_library(self) -> None:
        self._index = self._new_index()
        n = self.max_patterns
        self._total = 0  # entries ever added = the next entry number; entry e lives in row e % max_patterns
        self._symbol = np.zeros(n, dtype=object)
        self._start_ns = np.zeros(n, dtype=np.int64)
        self._end_ns = np.zeros(n, dtype=np.int64)
        self._outcome_end_ns = np.zeros(n, dtype=np.int64)
        self._outcome = np.zeros((n, OUTCOME_DIM), dtype=np.float32)
        self._unit = np.zeros((n, self.pattern_dim), dtype=np.float32)  # the index's unit vectors, for exact search
        self._outcome_mean = np.zeros(OUTCOME_DIM, dtype=np.float32)
        self._outcome_std = np.ones(OUTCOME_DIM, dtype=np.float32)

    def _drop_compaction(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
            self._compaction = None

    def clear_library(self) -> None:
        """Empty the library (an exclusive update: running queries finish first)."""
        with self._update_lock:
            self._drop_compaction()
            with self._lock.write():
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

        All patterns are validated before any is added, so a bad one leaves the library untouched. Queries
        run between the chunks of a long update (each chunk is applied whole) and see its prefix.
        """
        for p in patterns:
            self._check(p, as_of_ns)
        patterns = list(patterns)
        if not patterns:
            return
        vectors = np.stack([np.asarray(p.vector, dtype=np.float32) for p in patterns])  # [n, D]
        with self._update_lock:
            if len(patterns) > self.max_patterns:  # all but the newest N would be evicted within this call
                self._replace(
                    patterns[-self.max_patterns :],
                    vectors[-self.max_patterns :],
                    skipped=len(patterns) - self.max_patterns,
                )
                return
            done = 0
            while True:
                self._maintain()
                if done == len(patterns):
                    return
                if self._compaction is not None:
                    room = self._compaction.swap_at - self._total
                else:
                    room = self._compact_at - self._index.element_count
                n = min(WRITE_CHUNK, len(patterns) - done, room)
                self._write(patterns[done : done + n], vectors[done : done + n])
                done += n

    def _maintain(self) -> None:
        """Swap in a finished compaction at its entry number; start one when the index is 3/4 full."""
        if self._compaction is not None and self._total >= self._compaction.swap_at:
            self._swap()
        if self._compaction is None and self._index.element_count >= self._compact_at:
            self._start_compaction(self._total + self._capacity - self._index.element_count)

    def _write(self, patterns: list[Pattern], vectors: np.ndarray) -> None:
        """Insert ``n <= WRITE_CHUNK`` entries under the exclusive lock, each evicting the entry N before it."""
        n_max = self.max_patterns
        labels = self._total + np.arange(len(patterns), dtype=np.int64)  # [n]
        rows = labels % n_max
        with self._lock.write():
            index = self._index
            for j, label in enumerate(labels.tolist()):
                if label >= n_max:
                    index.mark_deleted(label - n_max)  # its row is overwritten below
                index.add_items(vectors[j : j + 1], [label], num_threads=1)
            unit = index.get_items(labels)  # [n, D] as stored: unit norm
            self._set_rows(rows, patterns, unit)
            self._total += len(patterns)
            self._refresh_outcome_stats()
        if self._compaction is not None:
            self._compaction.feed(labels, unit)

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

    def _start_compaction(self, swap_at: int) -> None:
        """Build, in the background, the index of the entries live at ``swap_at``: those from ``swap_at - N``
        that exist now, then each one added until then (fed by ``_write``)."""
        labels = np.arange(max(0, swap_at - self.max_patterns, self._total - self.size), self._total, dtype=np.int64)
        self._compaction = _Compaction(self, swap_at, labels, self._unit[labels % self.max_patterns].copy())

    def _swap(self) -> None:
        """Wait for the builder (no lock held: queries go on), then swap its index in under the write lock."""
        assert self._compaction is not None  # called when the update reached its swap_at
        built = self._compaction.finish()
        live = self._live()
        rows = live % self.max_patterns
        if built is None or not np.array_equal(built[1], live):  # failed or stopped (close()): the same build, here
            index = self._new_index()
            for start in range(0, len(live), BUILD_CHUNK):
                self._build_add(index, live[start : start + BUILD_CHUNK], self._unit[rows[start : start + BUILD_CHUNK]])
            built = index, live, _stored(index, live)
        unit = self._unit.copy()
        unit[rows] = built[2]  # as the new index stores them (what a copy loaded from a save would see)
        old = self._index
        with self._lock.write():
            self._index, self._unit = built[0], unit
        del old  # freed outside the lock
        self._compaction = None
        self._compactions += 1

    def _replace(self, patterns: list[Pattern], vectors: np.ndarray, skipped: int) -> None:
        """The library becomes ``patterns`` (N of them, the newest of a call): built aside, swapped in whole."""
        self._drop_compaction()
        labels = self._total + skipped + np.arange(len(patterns), dtype=np.int64)  # [N]
        index = self._new_index()
        index.add_items(vectors, labels, num_threads=1)
        unit = _stored(index, labels)
        with self._lock.write():
            self._index, self._total = index, int(labels[-1]) + 1
            self._set_rows(labels % self.max_patterns, patterns, unit)
            self._refresh_outcome_stats()

    def save_library(self, directory: str | Path) -> None:
        """Write ``patterns.hnsw`` (the hnswlib index) and ``patterns.npz`` (entry metadata)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._update_lock:  # whole updates only; queries go on
            if not self._lock.acquire_read():
                raise RuntimeError("unreachable: untimed read lock")
            try:
                self._index.save_index(str(directory / "patterns.hnsw"))
                n = self.size
                np.savez(
                    directory / "patterns.npz",
                    library_format=LIBRARY_FORMAT,
                    pattern_dim=self.pattern_dim,
                    max_patterns=self.max_patterns,
                    total=self._total,
                    swap_at=-1 if self._compaction is None else self._compaction.swap_at,
                    symbol=self._symbol[:n].astype(str),
                    start_ns=self._start_ns[:n],
                    end_ns=self._end_ns[:n],
                    outcome_end_ns=self._outcome_end_ns[:n],
                    outcome=self._outcome[:n],
                )
            finally:
                self._lock.release_read()

    def load_library(self, directory: str | Path) -> None:
        """Replace the library with one written by ``save_library``; refuses another dimension, capacity or
        format (a library from before format 2: rebuild it, ``make model`` / ``hrmcond build-patterns``)."""
        directory = Path(directory)
        with np.load(directory / "patterns.npz", allow_pickle=False) as z:
            meta = {key: z[key] for key in z.files}
        found = int(meta["library_format"]) if "library_format" in meta else 1
        if found != LIBRARY_FORMAT:
            raise ValueError(
                f"pattern library at {directory} has format {found}, this {type(self).__name__} reads "
                f"{LIBRARY_FORMAT}: rebuild it (make model, or hrmcond build-patterns)"
            )
        for key in ("pattern_dim", "max_patterns"):
            if int(meta[key]) != getattr(self, key):
                raise ValueError(
                    f"pattern library at {directory} has {key}={int(meta[key])}, this "
                    f"{type(self).__name__} has {getattr(self, key)}"
                )
        index = hnswlib.Index(space="cosine", dim=self.pattern_dim)
        index.load_index(str(directory / "patterns.hnsw"), max_elements=self._capacity)
        index.set_ef(self._ef)
        n, total = len(meta["start_ns"]), int(meta["total"])
        live = np.arange(total - n, total, dtype=np.int64)
        try:
            unit = _stored(index, live)  # [n, D]
        except RuntimeError as err:
            raise ValueError(
                f"pattern library at {directory} is inconsistent: the index lacks live entries of the metadata ({err})"
            ) from err
        if n != min(total, self.max_patterns) or index.element_count > self._capacity:
            raise ValueError(
                f"pattern library at {directory} is inconsistent: {n} live entries of {total}, "
                f"index of {index.element_count} elements"
            )
        rows = live % self.max_patterns
        with self._update_lock:
            self._drop_compaction()
            with self._lock.write():
                self._reset_library()
                self._index, self._total = index, total
                self._unit[rows], self._symbol[:n] = unit, meta["symbol"]  # saved in row order
                for key in ("start_ns", "end_ns", "outcome_end_ns", "outcome"):
                    getattr(self, f"_{key}")[:n] = meta[key]
                self._refresh_outcome_stats()
            if int(meta["swap_at"]) >= 0:  # resume the pending compaction: the same index, swapped in the same place
                self._start_compaction(int(meta["swap_at"]))

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
            labels = labels.astype(np.int64) % self.max_patterns  # entry numbers -> rows
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
        """Stop the worker pool (queued queries are dropped; a running one finishes) and a compaction builder
        (a later update that needs its index builds it itself)."""
        compaction = self._compaction
        if compaction is not None and compaction.building:
            compaction.cancel()
        with self._pool_guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
