"""A readable run summary (demo, replay): volumes, dead letters, fail-open rate, latency, regimes, events."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np

from schemas.records import FAILED_OPEN, ContextRecord, DeadLetter
from schemas.session import NEW_YORK


def _et(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=NEW_YORK).strftime("%Y-%m-%d %H:%M")


def summarise(title: str, n_ticks: int, wall_s: float, contexts: list[ContextRecord], dead: list[DeadLetter]) -> str:
    by_symbol: dict[str, list[ContextRecord]] = {}
    for c in sorted(contexts, key=lambda c: (c.symbol, c.window_end_ns)):
        by_symbol.setdefault(c.symbol, []).append(c)
    regimes = Counter(c.regime for c in contexts)
    rag = Counter(c.rag_status for c in contexts)
    lat = np.array([c.latency.total_ms for c in contexts if c.latency is not None])
    n = max(1, len(contexts))
    lines = [
        "",
        f"== {title} ==",
        f"ticks in            {n_ticks:>10,}   ({n_ticks / wall_s:,.0f} ticks/s end to end, {wall_s:.1f} s)",
        f"contexts out        {len(contexts):>10,}   (one per symbol per bar with ticks: {len(by_symbol)} symbols, "
        f"{len({c.key for c in contexts}):,} unique keys, 256-d)",
        f"dead letters        {len(dead):>10,}   {dict(Counter(d.reason for d in dead))}",
        f"fail-open rate      {sum(rag[s] for s in FAILED_OPEN) / n:>10.2%}   RAG status {dict(rag)}",
    ]
    if lat.size:
        p50, p99, mx = np.percentile(lat, [50, 99, 100])
        lines.append(f"model latency       p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.2f} ms (per inference chunk)")
    if regimes.keys() - {None}:
        lines.append("regime time shares  " + ", ".join(f"{k} {v / n:.1%}" for k, v in regimes.most_common()))
        rates = []
        for recs in by_symbol.values():
            days: dict[str, list[str | None]] = {}
            for c in recs:
                days.setdefault(_et(c.window_end_ns)[:10], []).append(c.regime)
            rates += [sum(a != b for a, b in zip(r, r[1:], strict=False)) / len(r) for r in days.values()]
        lines.append(
            f"regime changes      max {max(rates):.1%} of bars per symbol-day (budget 5%), mean {np.mean(rates):.1%}"
        )
    lines.append("SSR/LULD events:")
    events = 0
    for symbol, recs in by_symbol.items():
        prev = "NORMAL"
        for c in recs:
            if c.ssr_luld_state != prev:
                lines.append(f"  {symbol} {_et(c.window_end_ns)} ET  {prev} -> {c.ssr_luld_state}")
                prev, events = c.ssr_luld_state, events + 1
    if not events:
        lines.append("  (none)")
    return "\n".join(lines)
