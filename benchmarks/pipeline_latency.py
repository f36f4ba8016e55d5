"""End-to-end latency through the replay dataflow: per bar batch and per context, primary and fail-open paths.

Writes benchmarks/results/pipeline_latency.json. Run: ``.venv/bin/python benchmarks/pipeline_latency.py``.

The graph is ``flows.replay.build_replay_flow`` run by ``flows.runner.run_process`` (one worker), with the
shipped default model and every conditioning path on, but with a **live-mode** engine
(``load_engine(cfg, deterministic=False)``): retrieval has its real ``timeout_ms`` deadline and each context
carries its stage latencies. Measured:

- ``batch_ms``: wall time of one inference step (``ContextEngine.drafts``: the wait for the previous batch's
  library update where it still runs, normalisation, regime classifier, retrieval, fusion; its own library
  update runs on the update thread) per bar batch (the bars that close together; ``batch_size`` given);
- ``context_total_ms``: per context, the model latency its batch took (``StageLatencies.total_ms``: feature
  stacking + regime + RAG + fusion), with the stage split ``regime_ms`` / ``rag_ms``;
- ``replay_s``, ``contexts_per_s``: the whole replay, ticks to merged JSONL, wall clock.

Workloads: the real TAQ sample (one stock, two days: one bar per batch) and a simulated day of 20 symbols
(replay conditions one bar end at a time: ~20 bars per batch). Fail-open: the same simulated day with the index
search slowed past the deadline (each ``PatternRAG._knn`` call sleeps ``timeout_ms + 40`` ms first):
``fail_open_slow_rag`` with the circuit breaker off (``pipeline.rag_breaker_after: 0``), so every batch waits out
``timeout_ms`` and falls back to the regime part (``rag_status = timeout``), and ``fail_open_slow_rag_breaker``
with the default breaker (after 3 such batches, retrieval is skipped for 5 s at a time: ``unavailable``, no
wait; flows/breaker.py). Budgets (spec): < 100 ms primary, < 80 ms fail-open. Bar-to-emit lag is not
reported: in replay, event time is history, not now.

``catch_up``: live, after a stall (a broker pause, a restart), the bars of many bar ends reach the inference
step in one batch. One ``drafts`` call on ``CATCH_UP_BARS`` bars of the simulated day (12 bar ends of 20
symbols), retrieval healthy and stuck: with one deadline per batch the stuck case costs one ``timeout_ms``, not
one per chunk, and the chunks after the deadline fail open.

``BENCH_PARTS=catch_up`` runs the catch-up part alone (on the simulated day's bars; ``replay`` the replays);
``BENCH_LABEL=<label>`` writes ``pipeline_latency_<label>.json`` (e.g. another checkout's code, back to back:
``PYTHONPATH=<checkout> BENCH_LABEL=main``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from results_file import LABEL, bench_parts, write_results

from conditioning.sim.market import MarketConfig, simulate_market
from flows.config import AppConfig, load_config
from flows.contexts import ContextEngine, load_engine
from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
from flows.runner import run_process
from schemas.records import ContextRecord

SHARED = Path(os.environ.get("HRMCOND_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SLOW_EXTRA_MS = 40
CATCH_UP_BARS = 240
PARTS = bench_parts("replay,catch_up")


def all_flags_config() -> AppConfig:
    """deploy/local.yaml: every conditioning path on, the shipped model."""
    return load_config(Path(__file__).resolve().parents[1] / "deploy" / "local.yaml", env={})


def pct(values) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    p50, p99 = np.percentile(v, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(v.max()), "n": int(v.size)}


def timed_engine(
    cfg: AppConfig, slow_rag: bool, seen: list | None = None
) -> tuple[ContextEngine, list[tuple[int, float]]]:
    """A live-mode engine whose ``drafts`` calls are timed: ``[(batch size, ms)]`` (and their bars kept in
    ``seen`` when given)."""
    engine = load_engine(cfg, deterministic=False)
    calls: list[tuple[int, float]] = []
    drafts = engine.drafts

    def timed(bars):
        t0 = time.perf_counter()
        out = drafts(bars)
        calls.append((len(bars), (time.perf_counter() - t0) * 1e3))
        if seen is not None:
            seen.extend(bars)
        return out

    engine.drafts = timed
    if slow_rag:
        rag = engine.system.pattern_rag
        knn = rag._knn
        delay = (cfg.conditioning.rag.timeout_ms + SLOW_EXTRA_MS) / 1e3

        def slow_knn(*args, **kwargs):
            time.sleep(delay)
            return knn(*args, **kwargs)

        rag._knn = slow_knn
    return engine, calls


def run(cfg: AppConfig, ticks, reference, slow_rag: bool, seen: list | None = None) -> dict:
    engine, calls = timed_engine(cfg, slow_rag, seen)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = ReplayOutputs(contexts=Path(tmp) / "contexts.jsonl")
        t0 = time.perf_counter()
        run_process(build_replay_flow(cfg, ticks, reference, outputs, engine=engine))
        finish_replay(outputs)
        wall = time.perf_counter() - t0
        with open(outputs.contexts, "rb") as f:
            records = [ContextRecord.model_validate_json(line) for line in f if line.strip()]
    engine.close()
    lat = [r.latency for r in records]
    sizes = np.array([b for b, _ in calls])
    return {
        "ticks": ticks.num_rows,
        "contexts": len(records),
        "rag_status": dict(Counter(r.rag_status for r in records)),
        "replay_s": wall,
        "contexts_per_s": len(records) / wall,
        "batches": len(calls),
        "batch_size": {"mean": float(sizes.mean()), "max": int(sizes.max())},
        "batch_ms": pct([ms for _, ms in calls]),
        "batch_ms_per_bar": pct([ms / b for b, ms in calls]),
        "context_total_ms": pct([x.total_ms for x in lat]),
        "context_regime_ms": pct([x.regime_ms for x in lat]),
        "context_rag_ms": pct([x.rag_ms for x in lat]),
    }


def catch_up(cfg: AppConfig, bars: list, slow_rag: bool, repeats: int = 5) -> dict:
    """One ``drafts`` call on ``bars`` (fresh engines, so the library is the shipped one each time)."""
    times, statuses = [], Counter()
    for _ in range(repeats):
        engine, calls = timed_engine(cfg, slow_rag)
        drafts, _ = engine.drafts(bars)
        engine.close()
        times.append(calls[0][1])
        statuses.update(d.rag_status for _, d in drafts)
    return {"bars": len(bars), "batch_ms": pct(times), "rag_status": dict(statuses)}


def fail_open_budget(results: dict) -> dict:
    """The slowest context of each fail-open case against the 80 ms budget (the maximum, not a percentile);
    where it is missed, the stages' worst cases beside their medians say which stage took the time."""
    out = {}
    for name in ("fail_open_slow_rag", "fail_open_slow_rag_breaker"):
        r = results[f"sim_20_symbols_1_day/{name}"]
        worst = r["context_total_ms"]["max_ms"]
        out[name] = {"max_ms": worst, "within_80_ms": worst < 80.0}
        if worst >= 80.0:
            out[name]["reason"] = {  # where the time went: the stages' worst cases beside their medians
                stage: {"max_ms": r[f"context_{stage}_ms"]["max_ms"], "p50_ms": r[f"context_{stage}_ms"]["p50_ms"]}
                for stage in ("rag", "regime")
            }
    return out


def main() -> None:
    from flows.sources.taq import read_taq

    cfg = all_flags_config()
    workloads = {}
    if "replay" in PARTS:
        taq = read_taq(SHARED / "taq_XXX_20180102-03_trades.csv.gz", SHARED / "taq_XXX_20180102-03_quotes.csv.gz")
        workloads["taq_real_1_symbol_2_days"] = (taq, ())
    market = simulate_market(MarketConfig(n_symbols=20, n_days=1, seed=7, start=dt.date(2024, 3, 4)))
    workloads["sim_20_symbols_1_day"] = (market.ticks, market.reference)
    results = {}
    sim_bars: list = []
    for name, (ticks, reference) in workloads.items():
        seen = sim_bars if name.startswith("sim") else None
        if seen is None and "replay" not in PARTS:
            continue  # the catch-up alone needs the simulated day's bars only
        results[f"{name}/primary"] = run(cfg, ticks, reference, slow_rag=False, seen=seen)
        print(name, "primary", json.dumps({k: results[f"{name}/primary"][k] for k in ("batch_ms", "rag_status")}))
    if "replay" in PARTS:
        no_breaker = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"rag_breaker_after": 0})})
        for name, run_cfg in (("fail_open_slow_rag", no_breaker), ("fail_open_slow_rag_breaker", cfg)):
            results[f"sim_20_symbols_1_day/{name}"] = run(run_cfg, market.ticks, market.reference, slow_rag=True)
            print(name, json.dumps(results[f"sim_20_symbols_1_day/{name}"]["batch_ms"]))
    catch = {}
    if "catch_up" in PARTS:
        stalled = sim_bars[len(sim_bars) // 2 :][:CATCH_UP_BARS]  # mid-day: full lookback windows
        catch = {"healthy": catch_up(cfg, stalled, slow_rag=False), "stuck": catch_up(cfg, stalled, slow_rag=True)}
        print("catch-up", json.dumps(catch))
    report = {
        "budgets_ms": {"primary": 100, "fail_open": 80},
        "setup": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "rag_timeout_ms": cfg.conditioning.rag.timeout_ms,
            "slow_rag_sleep_ms": cfg.conditioning.rag.timeout_ms + SLOW_EXTRA_MS,
            "model": str(cfg.model.dir.name),
            "bar_ms": cfg.pipeline.bar_ms,
            "workers": 1,
            "code": {"label": LABEL or "this checkout", "flows_from": build_replay_flow.__code__.co_filename},
        },
        "results": results,
        "catch_up": catch,
        "fail_open_budget": fail_open_budget(results) if "replay" in PARTS else {},
    }
    write_results("pipeline_latency", report)
    for name, r in results.items():
        print(
            f"{name}: batch p50/p99 {r['batch_ms']['p50_ms']:.2f}/{r['batch_ms']['p99_ms']:.2f} ms "
            f"(mean batch {r['batch_size']['mean']:.1f}), context total p50/p99 "
            f"{r['context_total_ms']['p50_ms']:.2f}/{r['context_total_ms']['p99_ms']:.2f} ms, "
            f"{r['contexts_per_s']:.0f} contexts/s, rag {r['rag_status']}"
        )


if __name__ == "__main__":
    main()
