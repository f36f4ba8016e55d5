"""The pattern library: the k nearest stored patterns of a query and their known outcomes (exact search: a float32
matrix product for candidates, hnswlib's own arithmetic for the answer; the torch head that turns them into a
context is conditioning/rag.py).

Search. Exact k-NN in cosine space (``d = 1 - cos``; the pattern vectors are z-scored shapes, so direction
matters and scale does not) over the live entries, as an hnswlib index would answer it: entries and queries are
normalised by :func:`unit_vectors` and distances are those of hnswlib's AVX-512 inner-product kernel
(conditioning/ip_kernel.py, both bit for bit); the answer is the k smallest ``(distance, entry number)`` pairs,
the order hnswlib's brute-force index keeps. A batch ``[B, D]`` is searched in three steps:

1. ``sim = unit(query) @ unit(library).T`` ``[B, N]``, one float32 matrix product (torch; its sums run in another
   order than the kernel's, but for unit vectors both are within ``E = 3e-5`` of the exact cosine: the error of a
   float32 dot product of 128 terms is at most ``128 * 2^-24 / (1 - 128 * 2^-24) ~ 7.6e-6`` whatever the order,
   twice that between two orders, plus the rounding of ``1 - s``, doubled again for margin); entries a row may not
   use get ``-inf``;
2. per row, a lower bound ``v`` on its k-th largest ``sim`` (the k-th largest maximum of its blocks of ``BLOCK``
   entries) and the band ``sim >= v - 2E``, read from the blocks whose maximum reaches it: every true neighbour
   lies in it (its exact distance is at most the k-th's, so its ``sim`` is within ``2E`` of the k-th largest);
3. the band's exact distances (:func:`ip_distances`), sorted by ``(distance, entry)``: the first k.

A zero query (a window without data: no shape) is at distance exactly 1 from every entry, so its neighbours are
the k oldest entries it may use, with no product. Rows are searched independently, so a batch of ``2 *
PARALLEL_ROWS`` rows or more is split into one part a core, each on a thread of its own (torch and numpy let go of
the GIL). At N = 10k a search costs ~0.07 ms of CPU a row in a batch of 256 (the product, ~2.6 MFLOP a row, ~40%;
the band and the exact step the rest), ~0.15 ms in a batch of 32 and ~1.2 ms for one row alone (its product reads
the whole 5 MB library), where hnswlib's brute-force index cost ~0.23 ms a row and 0.6-1.0 ms for one (same
machine, interleaved); an insert is a row of the ring arrays.

Library. The newest ``max_patterns`` (N) entries. Entry number ``e`` (0, 1, 2, ... in insertion order, never
reused) lives in row ``e % N`` of ring arrays (unit vector, outcome, window), so the live entries ``[total - N,
total)`` occupy distinct rows and ``Retrieval.labels`` are rows.

Point in time. An entry is added only once its outcome is known (``as_of_ns`` enforces it when given). A
query with a window ``[start_ns, end_ns)`` uses only entries whose outcome was known before the window
started, ``outcome_end_ns <= start_ns``: this excludes entries overlapping the window (embargo) and, in a
backtest over a full-history library, every later entry. An update also keeps the live rows sorted by
``outcome_end_ns`` (off the query path), so a row's eligible entries are counted with one binary search and the
others are a tail of that order. A row with at most ``EXACT_MAX`` eligible entries is searched over those alone
with a numpy matrix-vector product (its distances are numpy's, not the kernel's: the replay outputs of the real
samples, whose windows predate the shipped library, depend on them); the others as above.

Concurrency and deadline. Queries share a readers-writer lock and updates hold it exclusively, so a query sees
whole updates; an update computes everything first (rows, the sorted order, the outcome statistics) and holds the
lock only to store it. Updates, loads and saves are serialised by a second (writers') lock, so a save sees whole
updates. Queries run on a small worker pool and the caller waits for at most ``timeout_ms``. On a miss it gets
``None`` (status ``timeout``) while the worker finishes and releases the lock itself, in a ``finally``; a query
still queued when its caller gives up never runs.

Saved format (``LIBRARY_FORMAT`` 3): ``patterns.npz``, the ring rows of the live entries (unit vector, outcome,
window, symbol) and ``total``. Format 2 (an HNSW index ``patterns.hnsw`` beside the metadata, which the shipped
model still has) loads too: its unit vectors are read from the index.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import torch

from conditioning.features.types import Pattern
from conditioning.ip_kernel import LANES, ip_distances, unit_vectors
from conditioning.rwlock import RWLock
from schemas.layout import OUTCOME_DIM
from schemas.records import RagStatus

#: Up to this many eligible entries, a point-in-time row is searched over them alone (module docstring).
EXACT_MAX = 4_096
LIBRARY_FORMAT = 3
#: Bound on |matrix-product cosine - kernel cosine| for unit vectors (module docstring, step 1).
SIM_ERROR = 3e-5
#: Library rows per block in the search for a row's k-th largest similarity (step 2).
BLOCK = 64
#: Below this many rows, a row's k-th largest similarity comes from a partition of the row, not from blocks.
SMALL_ROWS = 4
#: A batch is split into parts of at least this many rows, one part a core (:meth:`PatternLibrary._knn`).
PARALLEL_ROWS = 16


def _distinct_rows(query: np.ndarray, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``query [B, D]`` (with their window start) that first show each distinct value, and for every row
    the position of its value among those: ``first [U]`` ascending, ``inverse [B]`` with ``query[first][inverse] ==
    query`` (values compared as bytes)."""
    key = np.ascontiguousarray(query).view(np.uint8).reshape(len(query), -1)  # [B, 4 D]
    if starts is not None:
        key = np.concatenate([key, np.ascontiguousarray(starts, dtype=np.int64).view(np.uint8).reshape(-1, 8)], 1)
    rows = np.ascontiguousarray(key).view(np.dtype((np.void, key.shape[1]))).ravel()  # [B] one value a row
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)  # in byte order
    order = np.argsort(first)  # -> in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.ravel()]


def _outcome_stats(outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Live outcomes ``[N, OUTCOME_DIM]`` -> their mean and std (floored at 1e-8), what summaries standardise by."""
    return outcome.mean(axis=0), np.maximum(outcome.std(axis=0), 1e-8).astype(np.float32)


def _similarity(unit: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Step 1 of the search: ``unit [S, D] @ library [N, D].T`` in float32 -> ``[S, N]``. torch's product runs on
    its own intra-op threads (the pipeline sets how many); numpy's BLAS would start every core's thread, which
    spin and contend with the dataflow. torch computes in float32 only at matmul precision "highest" (its
    default): "high" or "medium" let it round the inputs to bfloat16, past ``SIM_ERROR``; numpy then."""
    if torch.get_float32_matmul_precision() != "highest":
        return unit @ library.T
    return torch.mm(torch.from_numpy(unit), torch.from_numpy(library).T).numpy()


def _same_torch_threads() -> None:
    """A pool thread's start: give it the intra-op thread count torch was set to. The count set by
    ``torch.set_num_threads`` in one thread does not reach the BLAS of another (its OpenMP setting is per thread), so
    a product on a fresh thread ran on every core: one row's search took 25 ms instead of 0.3 on a loaded 2-core
    machine, its threads spinning."""
    torch.set_num_threads(torch.get_num_threads())


def _torch_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads run torch with the intra-op thread count it was set to."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=_same_torch_threads)


def _band(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2 of the search (module docstring): ``sim [S, nb * BLOCK]`` (at least k finite values a row) -> ``(row,
    col)`` ``[P]`` each: every value at or above its row's k-th largest minus ``2 * SIM_ERROR``, and a few below.

    By blocks of ``BLOCK`` columns: the k-th largest block maximum is at most the row's k-th largest value (those k
    blocks hold k values at or above it), so reading the blocks whose maximum reaches it minus the margin, and in
    them the values that do, finds the band (and the values between the two edges, which the exact step sorts
    out). Cheaper than a top-k of the whole row: one maximum per block, a top-k of ``nb`` maxima."""
    rows = len(sim)
    blocks = sim.view(rows, -1, BLOCK)  # [S, nb, BLOCK]
    best = blocks.amax(dim=2)  # [S, nb]
    kth = torch.full((rows,), -torch.inf) if best.shape[1] < k else torch.topk(best, k, dim=1).values[:, -1]
    few = kth == -torch.inf  # fewer than k blocks hold a usable value (a small library): the row's own k-th
    if few.any():
        kth[few] = torch.topk(sim[few], k, dim=1).values[:, -1]
    low = kth - 2 * SIM_ERROR  # [S]
    row, block = torch.nonzero(best >= low[:, None], as_tuple=True)  # [Q] blocks reaching the band
    hit, col = torch.nonzero(blocks[row, block] >= low[row, None], as_tuple=True)  # [P]
    return row[hit], block[hit] * BLOCK + col


def _nearest(
    unit: np.ndarray, library: np.ndarray, sim: np.ndarray, entry: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 3 of the search: ``unit [S, D]`` nonzero query rows, ``library [N', D]`` unit rows, ``sim [S,
    N']`` their matrix product (``-inf`` where a row may not use an entry; at least k usable a row; ``N'`` a
    multiple of ``BLOCK``), ``entry [N']`` the entry number of each library row -> library rows ``[S, k]`` and
    distances ``[S, k]``: the k smallest ``(distance, entry)`` pairs of each row."""
    if len(sim) < SMALL_ROWS:  # a few rows: partition each (the blocks' top-k costs more in calls than it saves)
        low = np.partition(sim, sim.shape[1] - k, axis=1)[:, sim.shape[1] - k] - np.float32(2 * SIM_ERROR)
        row, cand = np.nonzero(sim >= low[:, None])
    else:
        row, cand = (t.numpy() for t in _band(torch.from_numpy(sim), k))
    dist = ip_distances(unit[row], library[cand])  # [P] exact
    order = np.lexsort((entry[cand], dist, row))  # by row, then (distance, entry)
    row, cand, dist = row[order], cand[order], dist[order]
    take = np.arange(len(row)) - np.searchsorted(row, np.arange(len(unit)))[row] < k  # the first k of each row
    return cand[take].reshape(len(unit), k), dist[take].reshape(len(unit), k)


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
        if pattern_dim % LANES:
            raise ValueError(f"{type(self).__name__}: pattern_dim must be a multiple of {LANES}, got {pattern_dim}")
        self.pattern_dim = pattern_dim
        self.max_patterns, self.k = max_patterns, k
        self._lock = RWLock()
        self._update_lock = threading.Lock()  # one mutator (update, clear, load) or save at a time
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._scan_pool: ThreadPoolExecutor | None = None
        self._cores = os.cpu_count() or 1
        self._pool_guard = threading.Lock()
        self._reset_library()

    # ------------------------------------------------------------------ library (writers)
    def _reset_library(self) -> None:
        n = self.max_patterns
        self._total = 0  # entries ever added = the next entry number; entry e lives in row e % max_patterns
        self._symbol = np.zeros(n, dtype=object)
        self._start_ns = np.zeros(n, dtype=np.int64)
        self._end_ns = np.zeros(n, dtype=np.int64)
        self._outcome_end_ns = np.zeros(n, dtype=np.int64)
        self._outcome = np.zeros((n, OUTCOME_DIM), dtype=np.float32)
        # unit_vectors of the patterns, and zero rows up to a whole number of blocks (the search reads blocks)
        self._unit = np.zeros((-(-n // BLOCK) * BLOCK, self.pattern_dim), dtype=np.float32)
        self._by_end = np.zeros(0, dtype=np.int64)  # [size] live rows by outcome_end_ns (point in time)
        self._entry = np.zeros(len(self._unit), dtype=np.int64)  # [N'] each row's entry number (the tie-break)
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
        is prepared outside the exclusive lock and stored whole under it: queries see all of it or none.
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
        outcome = np.stack([np.asarray(p.outcome, dtype=np.float32) for p in patterns])  # [n, OUTCOME_DIM]
        ends = np.array([p.outcome_end_ns for p in patterns], dtype=np.int64)
        with self._update_lock:  # the only writer: the arrays change under the exclusive lock alone
            total = self._total + skipped + len(patterns)
            rows = np.arange(total - len(patterns), total, dtype=np.int64) % n_max
            size = min(total, n_max)
            all_ends, all_outcome = self._outcome_end_ns[:size].copy(), self._outcome[:size].copy()
            all_ends[rows], all_outcome[rows] = ends, outcome
            by_end, (mean, std) = np.argsort(all_ends, kind="stable"), _outcome_stats(all_outcome)
            with self._lock.write():
                self._unit[rows], self._outcome[rows], self._outcome_end_ns[rows] = unit, outcome, ends
                self._entry[rows] = np.arange(total - len(patterns), total)
                self._symbol[rows] = [p.symbol for p in patterns]
                self._start_ns[rows] = [p.start_ns for p in patterns]
                self._end_ns[rows] = [p.end_ns for p in patterns]
                self._total, self._by_end = total, by_end
                self._outcome_mean, self._outcome_std = mean, std

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
            self._by_end = np.argsort(self._outcome_end_ns[:n], kind="stable")
            self._entry[live % self.max_patterns] = live
            if n:  # (an empty library keeps the reset's 0 and 1)
                self._outcome_mean, self._outcome_std = _outcome_stats(self._outcome[:n])

    # ------------------------------------------------------------------ queries (readers)
    def _knn(
        self, query: np.ndarray, unit: np.ndarray, starts: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The search of a batch, the read lock held (a seam for tests that slow it down or break it): ``query [B,
        D]`` as given, ``unit`` its unit rows, ``starts [B]`` the window starts (None: every entry is eligible) ->
        library rows ``[B, k]`` int64 (-1 where a row has fewer eligible entries) and distances ``[B, k]``."""
        rows = len(query)
        labels = np.full((rows, k), -1, dtype=np.int64)
        dist = np.ones((rows, k), dtype=np.float32)
        few = np.zeros(rows, dtype=bool)  # rows searched over their few eligible entries alone
        usable = None
        if starts is not None:
            usable = np.searchsorted(self._outcome_end_ns[self._by_end], starts, side="right")  # [B] eligible
            few = usable <= EXACT_MAX
            for i in np.flatnonzero(few):
                want = min(k, int(usable[i]))
                known = np.sort(self._by_end[: int(usable[i])])  # the rows eligible, in row order
                labels[i, :want], dist[i, :want] = self._exact_known(query[i], known, want)
        zero = ~unit.any(axis=1) & ~few
        if zero.any():  # every entry at distance exactly 1 (module docstring): the oldest eligible ones
            oldest = self._live() % self.max_patterns  # [n] rows, oldest entry first
            for i in np.flatnonzero(zero):
                labels[i] = (oldest if starts is None else oldest[self._outcome_end_ns[oldest] <= starts[i]])[:k]
        scan = np.flatnonzero(~few & ~zero)
        # A large batch is split over every core (torch and numpy let go of the GIL; rows are searched independently,
        # so the answers are the same): the bars of a catch-up must fit the deadline.
        parts = [p for p in np.array_split(scan, min(self._cores, max(1, len(scan) // PARALLEL_ROWS))) if len(p)]

        def search(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._scan(unit[part], None if usable is None else usable[part], k)

        found = self._scanners().map(search, parts) if len(parts) > 1 else map(search, parts)
        for part, (part_labels, part_dist) in zip(parts, found, strict=True):
            labels[part], dist[part] = part_labels, part_dist
        return labels, dist

    def _scan(self, unit: np.ndarray, usable: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3 (module docstring) for nonzero unit rows ``unit [S, D]``, of which row i may use the
        ``usable[i]`` entries first in outcome-time order (None: all) -> library rows and distances ``[S, k]``."""
        n = self.size
        library = self._unit[: -(-n // BLOCK) * BLOCK]  # [N', D]: the live rows, then zero rows
        sim = _similarity(unit, library)  # [S, N']
        sim[:, n:] = -np.inf
        for i, count in enumerate(() if usable is None else usable):
            sim[i, self._by_end[count:]] = -np.inf  # outcome not yet known at the window start
        return _nearest(unit, library, sim, self._entry[: len(library)], k)

    def _search(self, query: np.ndarray, starts: np.ndarray | None, deadline: float) -> Retrieval:
        if not self._lock.acquire_read(timeout=max(0.0, deadline - time.monotonic())):
            return Retrieval("timeout")  # a writer held the library past the deadline; the caller has gone
        try:
            n = self.size
            if n == 0:
                return Retrieval("empty")
            labels, dist = self._knn(query, unit_vectors(query), starts, min(self.k, n))
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

    def _exact_known(self, query: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine k-NN among the library rows ``labels [E]`` (ascending): rows ``[k]`` int64, distances
        ``[k]``."""
        norm = float(np.linalg.norm(query))
        dist = 1.0 - self._unit[labels] @ (query / norm if norm > 0 else query)  # [E]
        order = np.argsort(dist, kind="stable")[:k]
        return labels[order].astype(np.int64), dist[order].astype(np.float32)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_guard:
            self._pool = self._pool or _torch_pool(self._workers, "pattern-rag")
            return self._pool

    def _scanners(self) -> ThreadPoolExecutor:
        """One thread a core for the parts of a large batch (not the query pool: a search waits on its parts)."""
        with self._pool_guard:
            self._scan_pool = self._scan_pool or _torch_pool(self._cores, "pattern-scan")
            return self._scan_pool

    def search(self, query: np.ndarray, timeout_ms: float = 60, query_windows: np.ndarray | None = None) -> Retrieval:
        """k nearest valid neighbours of each query, or a failed ``Retrieval`` (timeout/empty/error).

        ``query [B, pattern_dim]`` float32, a copy the search may keep (a timed-out worker outlives the call);
        ``query_windows [B, 2]`` int64 ``(start_ns, end_ns)`` of each query's window enables the point-in-time
        filter. Bad input raises ``ValueError``; search failures
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
        except Exception as err:  # the search raised inside the worker: fail open, keep the cause
            return Retrieval("error", error=err)

    @property
    def querying(self) -> bool:
        """A query holds the library (between a caller's searches: one that timed out, its caller gone)."""
        return self._lock.reading

    def close(self) -> None:
        """Stop the worker pool (queued queries are dropped; a running one finishes)."""
        with self._pool_guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._scan_pool is not None:
                self._scan_pool.shutdown(wait=False)
                self._scan_pool = None
