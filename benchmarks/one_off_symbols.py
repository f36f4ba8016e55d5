"""Memory of a universe that churns through symbols: many symbols that each trade a few times, then never again.

Run: ``.venv/bin/python benchmarks/one_off_symbols.py [--symbols 50000] [--every-ms 400]``; writes
``benchmarks/results/one_off_symbols.json``.

Each of ``--symbols`` symbols trades three times within 40 s; a new symbol starts every ``--every-ms`` of
event time (50,000 x 0.4 s = one 5.6 h session). The day is replayed through the real dataflow (features
only: ``hrmcond replay --features-out``, one worker process) once per ``pipeline.evict_idle_s`` setting, and
the replay process's peak RSS (``ru_maxrss``) is recorded: without eviction every symbol's state stays to the
end; with it, only the symbols active within the window (flows/clock.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from peak_rss import command, peak_rss_mib
from results_file import write_results

from schemas.canonical import CANONICAL_SCHEMA, write_ticks

OPEN_NS = 1_709_562_600_000_000_000  # 2024-03-04 09:30 ET
REPO = Path(__file__).resolve().parents[1]


def one_off_day(symbols: int, every_ns: int) -> pa.Table:
    i = np.repeat(np.arange(symbols), 3)
    ts = OPEN_NS + i * every_ns + np.tile([0, 15, 40], symbols) * 10**9
    order = np.argsort(ts, kind="stable")
    n = len(ts)
    columns = {
        "ts_ns": ts[order],
        "symbol": [f"X{k:06d}" for k in i[order]],
        "kind": ["trade"] * n,
        "price": np.full(n, 10.0),
        "size": np.full(n, 100.0),
    }
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in CANONICAL_SCHEMA}, schema=CANONICAL_SCHEMA
    )


def replay_peak_rss_mib(ticks: Path, out: Path, evict_idle_s: int | None) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of one replay in a fresh process."""
    env = {**os.environ, "HRMCOND__PIPELINE__EVICT_IDLE_S": "null" if evict_idle_s is None else str(evict_idle_s)}
    started = time.perf_counter()
    done = subprocess.run(
        command(
            "replay",
            "--config",
            str(REPO / "deploy" / "local.yaml"),
            "--format",
            "canonical",
            "--ticks",
            str(ticks),
            "--features-out",
            str(out),
        ),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"replay failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return peak_rss_mib(done.stderr), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50_000)
    parser.add_argument("--every-ms", type=int, default=400)
    args = parser.parse_args()
    results: dict = {
        "symbols": args.symbols,
        "ticks": 3 * args.symbols,
        "new_symbol_every_ms": args.every_ms,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ticks = Path(tmp) / "one_off.parquet"
        write_ticks(one_off_day(args.symbols, args.every_ms * 10**6), ticks)
        for label, evict in (("evict_idle_600s", 600), ("evict_idle_1800s", 1800), ("no_eviction", None)):
            peak, wall = replay_peak_rss_mib(ticks, Path(tmp) / f"{label}.jsonl", evict)
            results["runs"][label] = {"evict_idle_s": evict, "peak_rss_mib": round(peak, 1), "wall_s": round(wall, 1)}
            print(f"{label:>18}: peak RSS {peak:7.1f} MiB, {wall:5.1f} s", flush=True)
    results["self_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_results("one_off_symbols", results, echo=False)


if __name__ == "__main__":
    main()
