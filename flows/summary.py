"""A readable run summary (demo, replay): volumes, dead letters, fail-open rate, latency, regimes, events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date

import numpy as np

from schemas.records import FAILED_OPEN, ContextRecord, DeadLetter, FeatureRecord
from schemas.session import new_york_time, trading_date


def _et(ts_ns: int) -> str:
    return new_york_time(ts_ns).strftime("%Y-%m-%d %H:%M")


def by_symbol(contexts: list[ContextRecord]) -> dict[str, list[ContextRecord]]:
    """Each symbol's contexts in time order, symbols sorted."""
    out: dict[str, list[ContextRecord]] = {}
    for c in sorted(contexts, key=lambda c: (c.symbol, c.window_end_ns)):
        out.setdefault(c.symbol, []).append(c)
    return out


def fail_open_rate(contexts: list[ContextRecord]) -> float:
    """Share of contexts that went out without their RAG part (0 for no contexts)."""
    return sum(c.rag_status in FAILED_OPEN for c in contexts) / max(1, len(contexts))


def regime_change_rates(symbols: dict[str, list[ContextRecord]]) -> list[float]:
    """Regime changes per bar, one rate per symbol and ET day (the 5% budget applies to each)."""
    rates = []
    for recs in symbols.values():
        days: dict[date, list[str | None]] = {}
        for c in recs:
            days.setdefault(trading_date(c.window_end_ns), []).append(c.regime)
        rates += [sum(a != b for a, b in zip(r, r[1:], strict=False)) / len(r) for r in days.values()]
    return rates


def ssr_luld_events(recs: Sequence[ContextRecord | FeatureRecord]) -> list[tuple[int, str, str]]:
    """One symbol's SSR/LULD state changes as ``(window_end_ns, before, after)``, from its context or feature
    records in time order; the day starts NORMAL."""
    events: list[tuple[int, str, str]] = []
    prev = "NORMAL"
    for c in recs:
        if c.ssr_luld_state != prev:
            events.append((c.window_end_ns, prev, c.ssr_luld_state))
            prev = c.ssr_luld_state
    return events


def summarise(title: str, n_ticks: int, wall_s: float, contexts: list[ContextRecord], dead: list[DeadLetter]) -> str:
    symbols = by_symbol(contexts)
    regimes = Counter(c.regime for c in contexts)
    rag = Counter(c.rag_status for c in contexts)
    lat = np.array([c.latency.total_ms for c in contexts if c.latency is not None])
    n = max(1, len(contexts))
    lines = [
        "",
        f"== {title} ==",
        f"ticks in            {n_ticks:>10,}   ({n_ticks / wall_s:,.0f} ticks/s end to end, {wall_s:.1f} s)",
        f"contexts out        {len(contexts):>10,}   (one per symbol per bar with ticks: {len(symbols)} symbols, "
        f"{len({c.key for c in contexts}):,} unique keys, 256-d)",
        f"dead letters        {len(dead):>10,}   {dict(Counter(d.reason for d in dead))}",
        f"fail-open rate      {fail_open_rate(contexts):>10.2%}   RAG status {dict(rag)}",
    ]
    if lat.size:
        p50, p99, mx = np.percentile(lat, [50, 99, 100])
        lines.append(f"model latency       p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.2f} ms (per inference chunk)")
    if regimes.keys() - {None}:
        lines.append("regime time shares  " + ", ".join(f"{k} {v / n:.1%}" for k, v in regimes.most_common()))
        rates = regime_change_rates(symbols)
        lines.append(
            f"regime changes      max {max(rates):.1%} of bars per symbol-day (budget 5%), mean {np.mean(rates):.1%}"
        )
    lines.append("SSR/LULD events:")
    events = [(symbol, e) for symbol, recs in symbols.items() for e in ssr_luld_events(recs)]
    lines += [f"  {symbol} {_et(t)} ET  {before} -> {after}" for symbol, (t, before, after) in events]
    if not events:
        lines.append("  (none)")
    return "\n".join(lines)
