"""Per-symbol memory of the dataflow's state after a full simulated day, and whether 10,000 symbols fit.

Run: ``.venv/bin/python benchmarks/state_memory.py [--symbols 10000] [--simulated 100] [--chunk 50]
[--trades-per-day 2000]``; writes ``benchmarks/results/state_memory.json``.

What is measured: ``flows.bars.SymbolState`` (the object Bytewax keeps per key and pickles into recovery
snapshots), holding its ``SymbolFeatures`` after one regular session of the seeded market simulator
(``conditioning.sim.market``, ``trades_per_day`` trades and ``quotes_per_trade`` NBBO changes per trade),
fed and closed as the dataflow does (reference data first, every in-session bar closed, 1-minute bars,
30-minute window): the trailing window's ticks, the per-bar table, the pattern history, pending patterns and
the SSR/LULD tracker.

- ``simulated``: ``--simulated`` symbols are simulated in chunks of ``--chunk`` (one ``simulate_market`` per
  chunk, its ticks dropped before the next, so memory is bounded by one chunk of ticks plus the states).
  Per state: the memory it retains (``tracemalloc``, allocations still alive after the chunk's ticks are
  freed, divided by the chunk's symbols) and its pickle size.
- ``extrapolated``: per-state mean x ``--symbols``.
- ``measured``: ``--symbols`` live states, all held at once, rebuilt from the simulated states' pickled
  snapshots round robin (each one a separate object graph, exactly what a Bytewax recovery builds), their
  retained memory measured with ``tracemalloc`` and their snapshot bytes summed. Running the full session
  for 10,000 symbols costs ~10^4 x 390 bar closes of CPU; ``--simulated 10000`` does it when wanted.

"Comfortable" here: the 10,000 states take under 10% of this machine's RAM and their snapshot under 1 GiB.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np
from results_file import write_results

from conditioning.features.state import SymbolFeatures
from conditioning.sim.market import MarketConfig, simulate_market
from flows.bars import SymbolState, feature_params
from flows.config import PipelineConfig
from schemas.session import session_day

ROOT = Path(__file__).resolve().parents[1]
COMFORT_RAM_SHARE = 0.10
COMFORT_SNAPSHOT_BYTES = 1 << 30


def simulate_chunk(offset: int, n: int, trades_per_day: float, seed: int) -> list[SymbolState]:
    """States of ``n`` symbols after one simulated session (their own market, seeded by ``seed``)."""
    cfg = PipelineConfig()
    params = feature_params(cfg)
    market = simulate_market(MarketConfig(n_symbols=n, seed=seed, trades_per_day=trades_per_day))
    t = market.ticks
    sym = t["symbol"].to_numpy(zero_copy_only=False)
    order = np.argsort(sym, kind="stable")  # per symbol, in event order
    bounds = np.flatnonzero(np.r_[True, sym[order][1:] != sym[order][:-1], True])
    cols = {k: t[k].to_numpy(zero_copy_only=False) for k in ("ts_ns", "kind", "price", "size", "bid", "ask")}
    cols["bid_size"] = t["bid_size"].to_numpy(zero_copy_only=False)
    cols["ask_size"] = t["ask_size"].to_numpy(zero_copy_only=False)
    reference = {r.symbol: r for r in market.reference}
    del market, t
    states = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        name = str(sym[rows[0]])
        sf = SymbolFeatures(f"SIM{offset + int(name[3:]):05d}", params)
        ref = reference[name]
        sf.on_reference(ref.date, ref.prev_close, ref.tier)
        day = session_day(ref.date)
        ts, kind = cols["ts_ns"][rows].tolist(), cols["kind"][rows].tolist()
        p, s = cols["price"][rows].tolist(), cols["size"][rows].tolist()
        bid, bs = cols["bid"][rows].tolist(), cols["bid_size"][rows].tolist()
        ask, as_ = cols["ask"][rows].tolist(), cols["ask_size"][rows].tolist()
        next_end = ts[0] - ts[0] % params.bar_ns + params.bar_ns
        for i, now in enumerate(ts):
            while now >= next_end:  # the dataflow closes every in-session bar end
                sf.close_bar(next_end)
                next_end += params.bar_ns
            if kind[i] == "trade":
                sf.on_trade(now, p[i], s[i])
            else:
                sf.on_quote(now, bid[i], bs[i], ask[i], as_[i])
        while next_end <= day.close_ns:
            sf.close_bar(next_end)
            next_end += params.bar_ns
        states.append(SymbolState(features=sf, released_ns=ts[-1], newest_ns=ts[-1], features_end_ns=next_end))
    return states


def retained(build) -> tuple[object, int]:
    """``build()`` and the bytes it leaves allocated (tracemalloc must be running)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    gc.collect()
    return obj, tracemalloc.get_traced_memory()[0] - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=10_000)
    ap.add_argument("--simulated", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--trades-per-day", type=float, default=2_000.0)
    args = ap.parse_args()

    tracemalloc.start()
    t0 = time.perf_counter()
    states: list[SymbolState] = []
    for k, offset in enumerate(range(0, args.simulated, args.chunk)):
        states += simulate_chunk(offset, min(args.chunk, args.simulated - offset), args.trades_per_day, 1000 + k)
        gc.collect()  # the chunk's ticks are gone: memory holds one chunk at most
    sim_s = time.perf_counter() - t0
    blobs = [pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for s in states]
    pickle_sizes = np.array([len(b) for b in blobs])
    window_trades = np.array([len(s.features._trades) for s in states])
    # What the live states hold: the memory freed by dropping them (one-time caches of the simulator,
    # numpy or pyarrow stay allocated and are not counted).
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    del states
    gc.collect()
    mean_bytes = (before - tracemalloc.get_traced_memory()[0]) / args.simulated

    # All --symbols states alive at once, restored from the snapshots round robin.
    t1 = time.perf_counter()
    restored, live_bytes = retained(lambda: [pickle.loads(blobs[i % len(blobs)]) for i in range(args.symbols)])
    snapshot_bytes = int(sum(len(blobs[i % len(blobs)]) for i in range(args.symbols)))
    restore_s = time.perf_counter() - t1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del restored

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    comfortable = live_bytes < COMFORT_RAM_SHARE * ram and snapshot_bytes < COMFORT_SNAPSHOT_BYTES
    mib = 1 << 20
    result = {
        "benchmark": "flows.bars.SymbolState after one simulated session, 1-minute bars, 30-minute window",
        "trades_per_day": args.trades_per_day,
        "quotes_per_trade": MarketConfig().quotes_per_trade,
        "simulated": {
            "symbols": args.simulated,
            "chunk": args.chunk,
            "seconds": round(sim_s, 1),
            "retained_bytes_per_state_mean": round(mean_bytes),
            "pickle_bytes_per_state_mean": round(float(pickle_sizes.mean())),
            "pickle_bytes_per_state_max": int(pickle_sizes.max()),
            "window_trades_per_state_mean": round(float(window_trades.mean()), 1),
        },
        "extrapolated": {
            "symbols": args.symbols,
            "retained_mib": round(mean_bytes * args.symbols / mib, 1),
            "snapshot_mib": round(float(pickle_sizes.mean()) * args.symbols / mib, 1),
        },
        "measured": {
            "symbols": args.symbols,
            "how": "states restored from the simulated states' snapshots round robin, all alive at once",
            "retained_mib": round(live_bytes / mib, 1),
            "snapshot_mib": round(snapshot_bytes / mib, 1),
            "tracemalloc_peak_mib": round(peak / mib, 1),
            "seconds": round(restore_s, 1),
        },
        "machine_ram_mib": round(ram / mib),
        "comfortable_rule": f"retained < {COMFORT_RAM_SHARE:.0%} of RAM and snapshot < 1 GiB",
        "comfortable": bool(comfortable),
    }
    write_results("state_memory", result, echo=True)


if __name__ == "__main__":
    main()
