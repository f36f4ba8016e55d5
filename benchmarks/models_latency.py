"""Latency of the conditioning models on CPU: p50/p99 per component and end to end, batch sizes 1/64/256.

Writes benchmarks/results/models_latency.json. Run: ``.venv/bin/python benchmarks/models_latency.py``.

- FiLM on ``l_tokens [B, T=64, 512]`` (with ``film_copy_floor``: a plain ``clone()`` of the tokens, the cost
  of producing any new tensor of that size; at B=256 it is 33 MB and dominates); regime classifier on
  ``[B, 20]``; PatternRAG (10k clustered library, k=10, no deadline pressure) on ``[B, 128]``;
- system ``primary``: regime + RAG + hybrid fusion (``condition()``, the dataflow's call);
- system ``fail_open_timeout``: the index is stuck (each search sleeps 1 s), so every call waits out the
  60 ms deadline and falls back to the regime part: this is the worst case the <80 ms budget is about;
- system ``fail_open_rag_disabled``: regime only, as when RAG is switched off.

torch gets one intra-op thread: on a 2-core box the other core serves the RAG worker thread and the
dataflow; at these sizes a second torch thread buys little and adds jitter.

``online_updates``: the shipped model's 10k library (conditioning/pretrained/default: real pattern vectors)
receives ``ONLINE_STREAM`` (2N) more patterns, near-repeats of its own, i.e. every one evicts the oldest. Per
call size: wall ms per pattern seen by the caller, process CPU ms per pattern (all threads), the longest and the
p99 exclusive-lock hold; then the same stream again with a thread querying (B=64, the 60 ms deadline, 2 ms
apart): query p50/p99/max and how many failed open. ``update_point_reference``: what an HNSW index (hnswlib,
M=16, ef_construction=200) on a full 10k library costs per pattern, re-adding an existing label
(``updatePoint``, graph repair) and inserting a fresh one: the library's two earlier designs (docs/models.md).

``BENCH_PARTS=batches`` runs the per-batch-size part alone (``online`` the other); ``BENCH_LABEL=<label>`` writes
``models_latency_<label>.json`` (e.g. the same benchmark over another checkout's code, back to back:
``PYTHONPATH=<checkout> BENCH_LABEL=main``).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from results_file import LABEL, bench_parts, write_results

from conditioning.config import ConditioningConfig
from conditioning.features.types import Pattern
from conditioning.film import FiLMLayer
from conditioning.rag import PatternRAG
from conditioning.regime import RegimeClassifier
from conditioning.system import ConditioningSystem

BATCHES = (1, 64, 256)
TOKENS = 64
ONLINE_STREAM = 20_000
ONLINE_CALLS = (64, 1_000)
MODEL_DIR = Path(__file__).resolve().parent.parent / "conditioning" / "pretrained" / "default"
PARTS = bench_parts("batches,online")


def timed(fn, iters: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99)), "iters": iters}


def library(rng: np.random.Generator, n: int = 10_000) -> list[Pattern]:
    centres = rng.standard_normal((100, 128))
    x = (centres[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, 128))).astype(np.float32)
    out = rng.standard_normal((n, 2)).astype(np.float32)
    return [Pattern("SYM", i, i + 30, i + 35, x[i], out[i]) for i in range(n)]


def hold_recorder(rag: PatternRAG) -> list[float]:
    """Record how long each exclusive hold of ``rag``'s index lock lasts (ms), from acquisition to release."""
    holds: list[float] = []
    write = rag._lock.write

    @contextmanager
    def timed_write():
        with write():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                holds.append((time.perf_counter() - t0) * 1e3)

    rag._lock.write = timed_write
    return holds


def stream_into(rag: PatternRAG, stream: list[Pattern], call: int) -> tuple[float, float]:
    """Add ``stream`` in calls of ``call`` patterns: (wall ms, process CPU ms) per pattern."""
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(stream), call):
        rag.update_pattern_library(stream[start : start + call])
    n = len(stream)
    return (time.perf_counter() - w0) * 1e3 / n, (time.process_time() - c0) * 1e3 / n


def shipped_patterns(n_stream: int, rng: np.random.Generator) -> list[Pattern]:
    """The shipped library's live patterns, oldest first, then ``n_stream`` near-repeats of them (unit vectors
    plus N(0, 0.005^2) per component, ~6% of a component's scale), all with consecutive windows."""
    from conditioning.artifacts import load_model

    rag = load_model(MODEL_DIR).system.pattern_rag
    rows = rag._live() % rag.max_patterns
    x, out = rag._unit[rows], rag._outcome[rows]  # [N, 128], [N, 2]
    rag.close()
    take = np.arange(len(rows) + n_stream) % len(rows)
    repeat = (np.arange(len(take)) >= len(rows))[:, None]  # [N + S, 1]
    vectors = x[take] + np.where(repeat, 0.005 * rng.standard_normal((len(take), 128)), 0.0)
    vectors = vectors.astype(np.float32)
    return [Pattern("SYM", i, i + 30, i + 35, vectors[i], out[j]) for i, j in enumerate(take)]


def online_updates(patterns: list[Pattern], n_library: int, call: int, rag_cls=PatternRAG) -> dict:
    """Online updates of a full library (``patterns[:n_library]``) by the rest of ``patterns``."""
    base, stream = patterns[:n_library], patterns[n_library:]
    result: dict = {"patterns": len(stream), "call": call}
    rag = rag_cls(128, 256, max_patterns=n_library)
    rag.update_pattern_library(base)
    holds = hold_recorder(rag)
    result["wall_ms_per_pattern"], result["cpu_ms_per_pattern"] = stream_into(rag, stream, call)
    result["write_hold_max_ms"] = float(np.max(holds))
    result["write_hold_p99_ms"] = float(np.percentile(holds, 99))
    rag.close()

    # The same stream with queries running: what the 60 ms deadline sees.
    rag = rag_cls(128, 256, max_patterns=n_library)
    rag.update_pattern_library(base)
    stop, lat, statuses = threading.Event(), [], {}
    queries = torch.from_numpy(np.stack([p.vector for p in base[:64]]) + 0.05)

    def reader() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            status = rag.retrieve(queries, timeout_ms=60).status
            lat.append((time.perf_counter() - t0) * 1e3)
            statuses[status] = statuses.get(status, 0) + 1
            time.sleep(0.002)

    thread = threading.Thread(target=reader)
    thread.start()
    result["with_queries_wall_ms_per_pattern"], _ = stream_into(rag, stream, call)
    stop.set()
    thread.join()
    rag.close()
    result["queries"] = {
        "n": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(np.max(lat)),
        "statuses": statuses,
    }
    return result


def update_point_reference(patterns: list[Pattern], n_library: int, n: int = 1_000) -> dict:
    """ms per pattern for hnswlib re-adding an existing label (``updatePoint``) vs a fresh label, 10k index."""
    import hnswlib

    x = np.stack([p.vector for p in patterns[: n_library + n]])
    out = {}
    for name, labels in (("update_point", np.arange(n)), ("fresh_insert", np.arange(n_library, n_library + n))):
        index = hnswlib.Index(space="cosine", dim=128)
        index.init_index(max_elements=2 * n_library, M=16, ef_construction=200, random_seed=0)
        index.add_items(x[:n_library], np.arange(n_library), num_threads=1)
        t0 = time.perf_counter()
        index.add_items(x[n_library:], labels, num_threads=1)
        out[f"{name}_ms_per_pattern"] = (time.perf_counter() - t0) * 1e3 / n
    return out


def _library_file() -> str:
    import conditioning.library

    return str(conditioning.library.__file__)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    patterns = library(rng)
    film, clf = FiLMLayer(256, 512).eval(), RegimeClassifier(20).eval()
    torch.nn.init.normal_(film.up.weight, std=0.02)  # trained-like weights, not the zero shortcut
    rag = PatternRAG(128, 256)
    rag.update_pattern_library(patterns)
    cfg = ConditioningConfig(enable_regime=True, enable_rag=True, enable_hybrid=True)
    primary = ConditioningSystem(cfg).eval()
    primary.pattern_rag.update_pattern_library(patterns)
    stuck = ConditioningSystem(cfg).eval()
    stuck.pattern_rag.update_pattern_library(patterns[:100])
    stuck.pattern_rag._knn = lambda *args, **kwargs: time.sleep(1.0)
    regime_only = ConditioningSystem(ConditioningConfig(enable_regime=True)).eval()

    results: dict[str, dict] = {}
    with torch.no_grad():
        for b in BATCHES if "batches" in PARTS else ():
            tokens, ctx = torch.randn(b, TOKENS, 512), torch.randn(b, 256)
            feats = {
                "regime_features": torch.randn(b, 20),
                "pattern_features": torch.from_numpy(np.stack([p.vector for p in patterns[:b]]) + 0.05),
            }
            assert stuck.condition(feats).rag_status == "timeout"
            results[f"B={b}"] = {
                "film": timed(lambda t=tokens, c=ctx: film(t, c), 200),
                # Floor for any op that returns a new [B, T, 512] tensor: allocating and writing it.
                "film_copy_floor": timed(lambda t=tokens: t.clone(), 200),
                "regime": timed(lambda f=feats: clf(f["regime_features"]), 200),
                "rag": timed(lambda f=feats: rag(f["pattern_features"], timeout_ms=1_000), 200),
                "system_primary": timed(lambda f=feats: primary.condition(f), 200),
                "system_fail_open_timeout": timed(lambda f=feats: stuck.condition(f), 40, warmup=1),
                "system_fail_open_rag_disabled": timed(lambda f=feats: regime_only.condition(f), 200),
            }
    online: dict[str, dict] = {}
    if "online" in PARTS:
        online_patterns = shipped_patterns(ONLINE_STREAM, np.random.default_rng(1))
        n_library = len(online_patterns) - ONLINE_STREAM
        online = {f"call={call}": online_updates(online_patterns, n_library, call) for call in ONLINE_CALLS}
        online["update_point_reference"] = update_point_reference(online_patterns, n_library)
    report = {
        "budgets_ms": {"film": 5, "regime": 20, "rag": 60, "end_to_end": 100, "fail_open": 80},
        "setup": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "film_tokens": TOKENS,
            "rag_library": len(patterns),
            "rag_timeout_ms": cfg.rag.timeout_ms,
            "online_library": f"{MODEL_DIR.name}: its patterns + {ONLINE_STREAM} near-repeats",
            "code": {"label": LABEL or "this checkout", "library_from": _library_file()},
        },
        "results": results,
        "online_updates": online,
    }
    write_results("models_latency", report)
    for batch, rows in results.items():
        print(batch, {k: f"{v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in rows.items()})
    for name, row in online.items():
        print(name, row)
    for system in (primary, stuck, regime_only):
        system.pattern_rag.close()
    rag.close()


if __name__ == "__main__":
    main()
