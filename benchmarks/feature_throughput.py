"""Feature-update throughput of SymbolFeatures on the real TAQ sample, ticks per second on one core.

Run: ``.venv/bin/python benchmarks/feature_throughput.py [SHARED_DATA_DIR]``; writes
``benchmarks/results/feature_throughput.json``. The TAQ sample (one NYSE stock, 2018-01-02/03, trades plus
the NBBO built across venues by ``flows.sources.taq``) is replayed through one ``SymbolFeatures`` with
1-minute bars and a 30-minute window, closing every bar (overnight ones too). Reported: ticks/s of the whole
replay, and the split between the per-tick path (``on_trade``/``on_quote``, including the SSR/LULD tracker)
and the bar closes (window estimators). Best of ``REPEATS`` runs, single thread (BLAS pinned to 1 thread).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from conditioning.features.batch import Ticks  # noqa: E402
from conditioning.features.state import FeatureParams, SymbolFeatures  # noqa: E402
from flows.sources.taq import read_taq  # noqa: E402

REPEATS = 5
ROOT = Path(__file__).resolve().parents[1]


def run_once(ticks: Ticks, params: FeatureParams) -> tuple[float, float, int]:
    """(seconds in the tick path, seconds in bar closes, bars closed) for one replay."""
    sf = SymbolFeatures("XXX", params)
    bar_ns = params.bar_ns
    on_trade, on_quote, close_bar = sf.on_trade, sf.on_quote, sf.close_bar
    columns = [
        a.tolist()
        for a in (
            ticks.ts_ns,
            ticks.is_trade,
            ticks.price,
            ticks.size,
            ticks.bid,
            ticks.bid_size,
            ticks.ask,
            ticks.ask_size,
        )
    ]
    next_end = columns[0][0] - columns[0][0] % bar_ns + bar_ns
    close_s, n_bars = 0.0, 0
    clock = time.perf_counter
    start = clock()
    for t, trade, p, s, b, bs, a, a_s in zip(*columns, strict=True):
        if t >= next_end:
            c0 = clock()
            while t >= next_end:
                close_bar(next_end)
                next_end += bar_ns
                n_bars += 1
            close_s += clock() - c0
        if trade:
            on_trade(t, p, s)
        else:
            on_quote(t, b, bs, a, a_s)
    total = clock() - start
    return total - close_s, close_s, n_bars


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    table = read_taq(data / "taq_XXX_20180102-03_trades.csv.gz", data / "taq_XXX_20180102-03_quotes.csv.gz")
    ticks = Ticks.from_canonical(table, "XXX")
    params = FeatureParams()
    runs = [run_once(ticks, params) for _ in range(REPEATS)]
    tick_s, close_s, n_bars = min(runs, key=lambda r: r[0] + r[1])
    n = int(ticks.ts_ns.size)
    result = {
        "benchmark": "SymbolFeatures replay of the TAQ sample (XXX, 2018-01-02/03), 1 thread",
        "ticks": n,
        "trades": int(ticks.is_trade.sum()),
        "quotes": int((~ticks.is_trade).sum()),
        "bars_closed": n_bars,
        "bar_ns": params.bar_ns,
        "lookback_ns": params.lookback_ns,
        "seconds_tick_path": round(tick_s, 4),
        "seconds_bar_closes": round(close_s, 4),
        "ticks_per_s_total": round(n / (tick_s + close_s)),
        "ticks_per_s_tick_path": round(n / tick_s),
        "us_per_bar_close": round(1e6 * close_s / n_bars, 1),
        "target_ticks_per_s": 500_000,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    out = ROOT / "benchmarks" / "results" / "feature_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
