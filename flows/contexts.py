"""From closed bars to context records: batched model inference, then per-symbol regime hysteresis.

All bars meet in one stateful step (:class:`InferenceLogic`, a single key): the models see micro-batches
rather than single rows, and the online pattern library is one piece of Bytewax state, snapshotted with
the rest, so after a crash it resumes with exactly the patterns it had. The step conditions bars in global
event-time order (:class:`InferenceLogic`), so the library, and with it every context, is the same whether
one or several workers compute the features, live or in replay, resumed after a crash or not. The regime
smoother is per-symbol state and runs after it in a keyed ``stateful_map``.

Point in time: matured patterns (outcome now known) join the library after the batch that made them known
has been conditioned, and retrieval skips patterns whose outcome was not known when the query window
started (conditioning/library.py), so the order of additions within a lookback never changes an answer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby

import numpy as np
import torch
from bytewax.operators import StatefulBatchLogic

from conditioning.features.state import BarFeatures
from conditioning.features.types import Pattern
from conditioning.hysteresis import RegimeSmoother
from conditioning.regime import REGIME_NAMES
from conditioning.system import ConditioningOutput, ConditioningSystem
from flows.bars import Heartbeat
from flows.breaker import RetrievalBreaker
from flows.config import AppConfig
from flows.feature_records import feature_record
from flows.metrics import METRICS
from schemas.records import (
    FAILED_OPEN,
    ConditioningFlags,
    ConditioningInputs,
    ContextRecord,
    FeatureRecord,
    StageLatencies,
)

log = logging.getLogger(__name__)

#: Rows per model call (see ContextEngine._chunk): small enough for per-bar latency, large enough to amortise.
INFER_ROWS = 32


@dataclass(frozen=True, slots=True)
class ContextDraft:
    """A context before regime smoothing (which needs the symbol's history)."""

    bar: BarFeatures
    context: list[float]
    regime_probs: list[float] | None
    rag_status: str
    latency: StageLatencies | None
    inputs: ConditioningInputs | None = None


class ContextEngine:
    """Holds the loaded models of one worker and turns bar batches into context drafts."""

    def __init__(self, cfg: AppConfig, system: ConditioningSystem, normalizer, model_version: str, deterministic: bool):
        # Batches are small (one activation's bars); intra-op threads only contend with the dataflow and the
        # retrieval workers for the cores (measured: several x slower per batch with torch's default).
        torch.set_num_threads(1)
        self.cfg = cfg
        self.system = system.eval()
        self.normalizer = normalizer
        self.model_version = model_version
        #: Replay: no wall-clock dependence in the output (no latencies, RAG waits instead of timing out).
        self.deterministic = deterministic
        self._update_thread: ThreadPoolExecutor | None = None
        self._last_update: futures.Future | None = None  # the newest queued library update
        self.breaker = RetrievalBreaker(cfg.pipeline.rag_breaker_after, cfg.pipeline.rag_breaker_cooldown_ms * 10**6)
        self.flags = ConditioningFlags(
            enable_regime=cfg.conditioning.enable_regime,
            enable_rag=cfg.conditioning.enable_rag,
            enable_hybrid=cfg.conditioning.enable_hybrid,
            fail_open=cfg.conditioning.fail_open,
        )

    def drafts(self, bars: list[BarFeatures]) -> tuple[list[tuple[str, ContextDraft]], list[Pattern]]:
        """Condition a batch; returns the drafts and the patterns this batch adds to the library (on the update
        thread: they are in it before the next batch's queries, :meth:`_settle`)."""
        retrieve = self.deterministic or self.breaker.allows(time.monotonic_ns())
        if retrieve:
            self._settle()
        # One retrieval deadline for the whole batch: chunks after it fail open at once instead of each
        # waiting out its own timeout (N bars would otherwise wait N / INFER_ROWS timeouts).
        deadline = time.perf_counter() + self.system.config.rag.timeout_ms / 1e3
        drafts = [
            d
            for start in range(0, len(bars), INFER_ROWS)
            for d in self._chunk(bars[start : start + INFER_ROWS], deadline, retrieve)
        ]
        if retrieve and not self.deterministic and self.flags.enable_rag:
            # Judged by the first chunk, which had the whole deadline: later ones of a large catch-up batch
            # time out from load, not because the index is stuck.
            # (Retrieval was attempted, so the status is never ``unavailable`` here.)
            self.breaker.record(drafts[0][1].rag_status in FAILED_OPEN, time.monotonic_ns())
        # A pattern from a window without data (all-zero vector) or whose outcome stayed undefined cannot be
        # retrieved meaningfully; it is left out of the library.
        matured = [
            p
            for b in bars
            for p in b.matured
            if np.any(p.vector) and np.isfinite(p.vector).all() and np.isfinite(p.outcome).all()
        ]
        if not self.cfg.pipeline.rag_online_updates:
            matured = []
        if matured:
            # The update runs on its own thread while this batch's contexts go out and the next ticks are read: it
            # costs microseconds a pattern (conditioning/library.py), but takes the index exclusively, so it waits
            # for a query still running (one that overran its deadline), and the contexts must not wait with it.
            update = self.add_patterns if self.deterministic else self._add_logged
            self._last_update = self._updater().submit(update, matured)
        return drafts, matured

    def _settle(self) -> None:
        """Before a batch's queries: the previous batch's library update is applied, so that every query sees the
        library the input alone implies, live as in replay.

        One exception, live: an update queued behind a query that overran its deadline (it holds the index until
        it returns, and the update needs it exclusively) is not waited for, as waiting would hold this batch's
        contexts with it (README, "Numbers"); it applies when the query lets go, in order with later ones."""
        pending = self._last_update
        if pending is None or (not self.deterministic and not pending.done() and self.system.pattern_rag.querying):
            return
        pending.result()  # a failed replay update is an error, as it was inline (live ones are logged)

    def _updater(self) -> ThreadPoolExecutor:
        if self._update_thread is None:  # one thread: updates apply in order
            self._update_thread = ThreadPoolExecutor(1, thread_name_prefix="pattern-updates")
        return self._update_thread

    def _add_logged(self, patterns: list[Pattern]) -> None:
        try:
            self.add_patterns(patterns)
        except Exception:  # nobody waits on this thread: say so where operators look
            log.exception("online pattern library update failed: %d patterns not added", len(patterns))

    def _chunk(self, bars: list[BarFeatures], deadline: float, retrieve: bool) -> list[tuple[str, ContextDraft]]:
        """At most INFER_ROWS bars, padded to exactly INFER_ROWS rows with copies of the first.

        Why pad: float32 matrix products give last-bit differences for the same row in batches of different
        sizes (the library picks other kernels), which would make a context depend on which other bars shared
        its batch, i.e. on timing and on the number of workers. At one fixed size each row's result is the same
        wherever it sits (tests/flows/test_replay.py checks byte-identical output for 1 and 2 workers).
        """
        n = len(bars)
        t0 = time.perf_counter()
        rows = bars + [bars[0]] * (INFER_ROWS - n)
        raw = np.stack([b.regime_features for b in rows])  # [R, 20]
        regime_x = torch.from_numpy(self.normalizer.transform(raw))  # [R, 20]
        pattern_x = torch.from_numpy(np.stack([b.pattern for b in rows]).astype(np.float32))  # [R, 128]
        windows = np.array([[b.window_start_ns, b.window_end_ns] for b in rows], dtype=np.int64)  # [R, 2]
        t1 = time.perf_counter()
        # Replay never races the clock (its generous per-call timeout applies); live shares the batch deadline.
        left_ms = None if self.deterministic else max(0.0, (deadline - time.perf_counter()) * 1e3)
        out = self.system.condition(
            {"regime_features": regime_x, "pattern_features": pattern_x}, windows, left_ms, retrieve
        )
        features_ms = (t1 - t0) * 1e3
        total_ms = features_ms + out.latency_ms["total"]
        METRICS.context_latency_ms.observe(total_ms)
        METRICS.rag_status.labels(out.rag_status).inc(n)
        latency = None
        if not self.deterministic:
            lat = out.latency_ms
            latency = StageLatencies(
                features_ms=features_ms,
                regime_ms=lat["regime"],
                rag_ms=lat["rag"],
                fusion_ms=lat["fusion"],
                total_ms=total_ms,
            )
        ctx = out.context.float().numpy()
        probs = None if out.regime_probs is None else out.regime_probs.float().numpy()
        inputs = self._inputs(regime_x, out) if self.cfg.pipeline.emit_conditioning_inputs else [None] * n
        return [
            (
                b.symbol,
                ContextDraft(
                    bar=b,
                    context=ctx[i].tolist(),
                    regime_probs=None if probs is None else probs[i].tolist(),
                    # per row: a batch can be answered while one row's window has no eligible neighbour
                    rag_status="empty" if out.rag_rows is not None and not out.rag_rows[i] else out.rag_status,
                    latency=latency,
                    inputs=inputs[i],
                ),
            )
            for i, b in enumerate(bars)
        ]

    @staticmethod
    def _inputs(regime_x: torch.Tensor, out: ConditioningOutput) -> list[ConditioningInputs | None]:
        """Per row, the inputs ``ConditioningSystem.fuse`` turned into its context (schemas/records.py)."""
        summary = None if out.rag_summary is None or out.rag_rows is None else out.rag_summary.float().numpy()
        rows = np.zeros(len(regime_x), dtype=bool) if out.rag_rows is None else out.rag_rows.numpy()
        return [
            ConditioningInputs(
                regime_features=regime_x[i].tolist(),
                rag_summary=None if summary is None or not rows[i] else summary[i].tolist(),
            )
            for i in range(len(regime_x))
        ]

    def add_patterns(self, patterns: list[Pattern]) -> None:
        if patterns:
            self.system.pattern_rag.update_pattern_library(patterns)

    def close(self) -> None:
        """Apply the library updates still queued, then stop the retrieval threads."""
        if self._update_thread is not None:
            self._update_thread.shutdown(wait=True)
            self._update_thread = None
            if self.deterministic and self._last_update is not None:
                self._last_update.result()  # a failed replay update is an error, as it was inline
        self.system.pattern_rag.close()

    def finish(
        self, smoother: RegimeSmoother | None, draft: ContextDraft | None
    ) -> tuple[RegimeSmoother | None, tuple[ContextRecord, FeatureRecord] | None]:
        """Per symbol: smooth the regime, build the records. ``smoother`` is the symbol's state; a ``None``
        draft (the symbol was evicted) discards it."""
        if draft is None:
            return None, None
        regime = None
        if draft.regime_probs is not None:
            if smoother is None:
                smoother = RegimeSmoother.from_stability_threshold(self.cfg.conditioning.regime.stability_threshold)
            regime = REGIME_NAMES[smoother.update(np.asarray(draft.regime_probs), draft.bar.ssr_luld_state)]
        latency = draft.latency
        if latency is not None:
            lag_ms = (time.time_ns() - draft.bar.window_end_ns) / 1e6
            latency = latency.model_copy(update={"bar_to_emit_ms": lag_ms})
        record = ContextRecord(
            symbol=draft.bar.symbol,
            window_end_ns=draft.bar.window_end_ns,
            context=draft.context,
            regime=regime,
            regime_probs=draft.regime_probs,
            ssr_luld_state=draft.bar.ssr_luld_state.name,
            rag_status=draft.rag_status,
            flags=self.flags,
            model_version=self.model_version,
            latency=latency,
            inputs=draft.inputs,
        )
        METRICS.contexts.labels(regime or "none").inc()
        return smoother, (record, feature_record(draft.bar))


@dataclass
class InferenceState:
    """What the inference key carries between batches, and into recovery snapshots."""

    #: The online patterns added so far, oldest first (the newest ``max_patterns``): on resume they are added
    #: again on top of the shipped library, which gives back the library the snapshot was taken with.
    added: deque[Pattern] = field(default_factory=deque)
    #: Bars waiting for every input partition's clock to pass their end.
    held: list[BarFeatures] = field(default_factory=list)
    #: (clock, time) -> keys of that clock that reported passing the time (until all ``fanout`` have).
    passed: dict[tuple[str, int], int] = field(default_factory=dict)
    #: clock -> the time every key of that clock has passed.
    clock_ns: dict[str, int] = field(default_factory=dict)
    #: Every clock has passed this time; bars ending at or before it have been conditioned.
    released_ns: int = 0
    #: (time, symbol) of evicting heartbeats not yet released: the symbol's smoother goes after its bars.
    evicting: list[tuple[int, str]] = field(default_factory=list)


def _bar_order(bar: BarFeatures) -> tuple[int, str]:
    """The order bars are conditioned in (workers deliver them in no particular interleaving)."""
    return bar.window_end_ns, bar.symbol


class InferenceLogic(StatefulBatchLogic):
    """The single inference key: conditions bar batches; its state is the online part of the library.

    Bars are held until every input partition's clock (flows/clock.py) has passed their end: one
    :class:`Heartbeat` per key of a clock, forwarded by the bar step behind the bars it closed. They are then
    conditioned one bar end at a time, symbols in name order, each end's matured patterns added before the
    next end is conditioned. The library every query sees is then a function of the input alone, not of how
    the partitions' reading interleaved, how far each worker had got, or where a crash and restart fell: replay
    and live give byte-identical contexts for any number of workers with the online library on, and a live
    run resumed after a crash gives the contexts of an uninterrupted one. The cost is latency: a bar waits for
    the slowest partition's watermark to pass its end (live, at the head of the topics, about the allowed
    lateness; a quiet partition advances on the wall clock once the broker confirms it has nothing more,
    ``pipeline.idle_close_ms``).
    """

    def __init__(self, engine: ContextEngine, resume: InferenceState | None):
        self.engine = engine
        self.state = resume or InferenceState()
        self.state.added = deque(self.state.added, maxlen=engine.cfg.conditioning.rag.max_patterns)
        engine.add_patterns(list(self.state.added))

    def on_batch(self, values: list[BarFeatures | Heartbeat]) -> tuple[list[tuple[str, ContextDraft | None]], bool]:
        st = self.state
        clocks = 0
        for value in values:
            if isinstance(value, BarFeatures):
                st.held.append(value)
                continue
            if value.evict:
                st.evicting.append((value.ts_ns, value.symbol))
            key = (value.clock, value.ts_ns)
            count = st.passed.get(key, 0) + 1
            if count < value.fanout:
                st.passed[key] = count
                continue
            st.passed.pop(key, None)
            st.clock_ns[value.clock] = max(st.clock_ns.get(value.clock, 0), value.ts_ns)
            clocks = value.clocks
        if not clocks or len(st.clock_ns) < clocks or min(st.clock_ns.values()) <= st.released_ns:
            return [], StatefulBatchLogic.RETAIN
        st.released_ns = min(st.clock_ns.values())
        st.passed = {k: n for k, n in st.passed.items() if k[1] > st.clock_ns[k[0]]}
        return self._release(st.released_ns), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, ContextDraft | None]], bool]:
        # End of input: every bar there will be has arrived.
        held = self.state.held
        return self._release(max((b.window_end_ns for b in held), default=0)), StatefulBatchLogic.RETAIN

    def _release(self, through_ns: int) -> list[tuple[str, ContextDraft | None]]:
        """Condition the held bars ending at or before ``through_ns``, one bar end at a time; an evicted
        symbol's ``(symbol, None)`` follows the bars up to its eviction time (and precedes any it has after)."""
        st = self.state
        due = sorted((b for b in st.held if b.window_end_ns <= through_ns), key=_bar_order)
        st.held = [b for b in st.held if b.window_end_ns > through_ns]
        gone = sorted(e for e in st.evicting if e[0] <= through_ns)
        st.evicting = [e for e in st.evicting if e[0] > through_ns]
        out: list[tuple[str, ContextDraft | None]] = []
        for end, same_end in groupby(due, key=lambda b: b.window_end_ns):
            while gone and gone[0][0] < end:
                out.append((gone.pop(0)[1], None))
            out += self._condition(list(same_end))
        return out + [(symbol, None) for _, symbol in gone]

    def _condition(self, bars: list[BarFeatures]) -> list[tuple[str, ContextDraft]]:
        """``bars`` in ``_bar_order``."""
        if not bars:
            return []
        drafts, added = self.engine.drafts(bars)
        self.state.added.extend(added)
        return drafts

    def snapshot(self) -> InferenceState:
        st = self.state
        return replace(
            st,
            added=st.added.copy(),
            held=list(st.held),
            passed=dict(st.passed),
            clock_ns=dict(st.clock_ns),
            evicting=list(st.evicting),
        )


def load_engine(cfg: AppConfig, deterministic: bool) -> ContextEngine:
    """Load the model directory named by ``cfg.model.dir`` (manifest checked) into a worker's engine."""
    from conditioning.artifacts import load_model

    conditioning = cfg.conditioning
    if deterministic:
        # Replay must not depend on machine load: retrieval waits for its answer instead of timing out.
        rag = conditioning.rag.model_copy(update={"timeout_ms": 10_000})
        conditioning = conditioning.model_copy(update={"rag": rag})
    model = load_model(cfg.model.dir, conditioning)
    return ContextEngine(cfg, model.system, model.normalizer, model_version(cfg.model.dir), deterministic)


def model_version(directory) -> str:
    """``<dir name>@<sha256 of every file, 12 hex>``: names exactly the weights, normaliser and library used."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{root.name}@{digest.hexdigest()[:12]}"
