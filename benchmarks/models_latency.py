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
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from conditioning.config import ConditioningConfig
from conditioning.features.types import Pattern
from conditioning.film import FiLMLayer
from conditioning.rag import PatternRAG
from conditioning.regime import RegimeClassifier
from conditioning.system import ConditioningSystem

BATCHES = (1, 64, 256)
TOKENS = 64
OUT = Path(__file__).resolve().parent / "results" / "models_latency.json"


def timed(fn, iters: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99)),
            "iters": iters}


def library(rng: np.random.Generator, n: int = 10_000) -> list[Pattern]:
    centres = rng.standard_normal((100, 128))
    x = (centres[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, 128))).astype(np.float32)
    out = rng.standard_normal((n, 2)).astype(np.float32)
    return [Pattern("SYM", i, i + 30, i + 35, x[i], out[i]) for i in range(n)]


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
        for b in BATCHES:
            tokens, ctx = torch.randn(b, TOKENS, 512), torch.randn(b, 256)
            feats = {"regime_features": torch.randn(b, 20),
                     "pattern_features": torch.from_numpy(np.stack([p.vector for p in patterns[:b]]) + 0.05)}
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
    report = {
        "budgets_ms": {"film": 5, "regime": 20, "rag": 60, "end_to_end": 100, "fail_open": 80},
        "setup": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "machine": platform.machine(), "python": platform.python_version(), "film_tokens": TOKENS,
                  "rag_library": len(patterns), "rag_timeout_ms": cfg.rag.timeout_ms},
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    for batch, rows in results.items():
        print(batch, {k: f"{v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in rows.items()})
    for system in (primary, stuck, regime_only):
        system.pattern_rag.close()
    rag.close()


if __name__ == "__main__":
    main()
