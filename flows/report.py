"""``hrmcond report``: one self-contained HTML page for a replayed day, from the replay's JSONL outputs.

The page has no external resource (inline CSS, SVG and a few lines of JS), so it opens anywhere, offline:

* a header: inputs, ET dates, symbols, bars, contexts, dead letters, fail-open rate, regime change rate
  (computed by :mod:`flows.summary`, as in the text summary), and the regime colour legend;
* for the whole run: the latency histogram (``latency.total_ms``; replay output has none) and dead letters by
  reason;
* a table of contents, one row per symbol, and per symbol: the price path with the regime timeline as bands
  behind it, TSRV vs RV vs BPV, and the SSR/LULD state and RAG status over time with the state changes.

Feature records carry no price. The price path drawn is the only one they do carry: the log return of the last
trade price chained through the matured patterns' outcomes (``fwd_log_return`` from a pattern's bar end to the
bar ``pattern_horizon_bars`` later, where the next link starts). So it is exact at those bar ends only, in %
of log price since the symbol's first link; where a link is missing the path restarts at 0 (said under the
chart).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from flows.summary import by_symbol, fail_open_rate, regime_change_rates, ssr_luld_events
from flows.svg import Band, Series, TimeAxis, bar_chart, lanes_chart, line_chart
from schemas.errors import HrmcondError
from schemas.records import ContextRecord, DeadLetter, FeatureRecord
from schemas.session import new_york_time

#: Band colours per regime (``conditioning.regime.REGIME_NAMES``; a test keeps the two in step). Light, so the
#: price line stays readable on top; "normal" nearly white, so the unusual regimes stand out.
REGIME_COLOURS = {
    "low_vol": "#c6dbef",
    "high_vol": "#fcbba1",
    "trending": "#c7e9c0",
    "mean_reverting": "#dadaeb",
    "ssr_active": "#fdd0a2",
    "luld_active": "#fa9fb5",
    "illiquid": "#d9d9d9",
    "normal": "#f7f4e8",
}
UNKNOWN_COLOUR = "#bdbdbd"
SSR_LULD_COLOURS = {"NORMAL": "#e5f5e0", "SSR_ACTIVE": "#fdae6b", "LULD_LIMIT": "#e6550d", "HALTED": "#a50f15"}
#: Greens to purples, apart from the SSR/LULD oranges that share the chart: a failure shows dark.
RAG_COLOURS = {
    "ok": "#a1d99b",
    "empty": "#c6dbef",
    "disabled": "#eeeeee",
    "timeout": "#bcbddc",
    "error": "#807dba",
    "unavailable": "#3f007d",
}
VOL_COLOURS = {"TSRV": "#1f77b4", "RV": "#ff7f0e", "BPV": "#2ca02c"}
NO_LATENCY = "no latencies (replay)"


@dataclass(frozen=True)
class Day:
    """A replay's three outputs, read and validated; ``sources`` names the files for the header."""

    contexts: list[ContextRecord]
    features: list[FeatureRecord]
    dead: list[DeadLetter]
    sources: dict[str, Path]


def _read(path: Path, model: type[BaseModel]) -> list:
    if not path.is_file():
        raise HrmcondError(f"{path}: no such file")
    try:
        return [model.model_validate_json(line) for line in path.read_bytes().splitlines() if line.strip()]
    except ValueError as err:
        raise HrmcondError(f"{path}: not {model.__name__} JSONL: {str(err).splitlines()[0]}") from None


def load(contexts: Path | None, features: Path | None, dead_letters: Path) -> Day:
    """Read the replay outputs; contexts or features may be missing (a features-only or contexts-only run)."""
    sources = {
        k: p
        for k, p in (("contexts", contexts), ("features", features), ("dead letters", dead_letters))
        if p is not None
    }
    return Day(
        _read(contexts, ContextRecord) if contexts else [],
        _read(features, FeatureRecord) if features else [],
        _read(dead_letters, DeadLetter),
        sources,
    )


def bar_length_ns(ends: dict[str, list[int]]) -> int:
    """The bar length: the smallest step between two consecutive bars of a symbol (bars without ticks are
    absent, never closer); one minute when no symbol has two bars."""
    steps = [b - a for e in ends.values() for a, b in zip(e, e[1:], strict=False) if b > a]
    return min(steps, default=60 * 10**9)


def runs(bars: Sequence[tuple[int, str | None]], bar_ns: int, colours: dict[str, str], what: str) -> list[Band]:
    """Bars ``(end_ns, state)`` -> one band per run of the same state over contiguous bars; a bar without ticks
    (no record) leaves a gap, and a ``None`` state (regime disabled) no band."""
    spans: list[list] = []  # [start_ns, end_ns, state]
    for end, state in bars:
        if state is None:
            continue
        if spans and spans[-1][1] == end - bar_ns and spans[-1][2] == state:
            spans[-1][1] = end
        else:
            spans.append([end - bar_ns, end, state])
    return [
        Band(start, end, colours.get(state, UNKNOWN_COLOUR), f"{what} {state} {_hm(start)}-{_hm(end)} ET")
        for start, end, state in spans
    ]


def price_path(features: Sequence[FeatureRecord]) -> tuple[list[tuple[int, float | None]], int]:
    """One symbol's chained log return of the last trade price, in %, at the chain's bar ends (see the module
    docstring), and how many times it restarts at 0 where the next link is missing. ``None`` breaks the line."""
    links = {m.end_ns: m for f in features for m in f.matured}
    points: list[tuple[int, float | None]] = []
    restarts, t = 0, min(links, default=None)
    while t is not None:
        level, link = 0.0, links.get(t)
        points.append((t, 0.0))
        while link is not None:
            level += float(link.outcome[0])
            points.append((link.outcome_end_ns, 100.0 * level))
            t, link = link.outcome_end_ns, links.get(link.outcome_end_ns)
        t = min((e for e in links if e > t), default=None)
        if t is not None:
            points.append((t, None))
            restarts += 1
    return points, restarts


def volatility(features: Sequence[FeatureRecord]) -> list[Series]:
    """TSRV, RV and BPV of each bar's trailing window as volatilities: ``sqrt(variance)`` in basis points of log
    price. A negative TSRV (its small-sample adjustment can go below 0) has no square root and is left out."""

    def vol(v: float | None) -> float | None:
        return None if v is None or v < 0 else 1e4 * math.sqrt(v)

    return [
        Series(name, VOL_COLOURS[name], [(f.window_end_ns, vol(getattr(f, name.lower()))) for f in features])
        for name in ("TSRV", "RV", "BPV")
    ]


def _hm(t_ns: int) -> str:
    return new_york_time(t_ns).strftime("%H:%M")


def _slug(i: int, symbol: str) -> str:
    return f"s{i}-{re.sub(r'[^A-Za-z0-9_-]', '_', symbol)}"


def symbol_section(
    i: int, symbol: str, contexts: list[ContextRecord], features: list[FeatureRecord], axis: TimeAxis, bar_ns: int
) -> str:
    """The three charts of one symbol and its SSR/LULD events."""
    regime_bands = runs([(c.window_end_ns, c.regime) for c in contexts], bar_ns, REGIME_COLOURS, "regime")
    path, restarts = price_path(features)
    seen = [r for r in REGIME_COLOURS if any(c.regime == r for c in contexts)]
    price = line_chart(
        axis,
        f"{symbol}: price path (last trade) and regime",
        "log return since first point, %",
        [Series("price path", "#222222", path)],
        regime_bands,
        legend=[(r, REGIME_COLOURS[r]) for r in seen],
    )
    notes = [
        "Price path: the matured patterns' forward log returns of the last trade price, chained (feature "
        "records carry no price); exact at the drawn points only."
    ]
    if restarts:
        notes.append(f"It restarts at 0 after {restarts} missing link(s): the move over a gap is not known.")
    if not features:
        notes = ["No feature records given (--features): no price path and no volatilities."]
    window_min = (features[0].window_end_ns - features[0].window_start_ns) / 6e10 if features else 0
    vol_chart = line_chart(
        axis,
        f"{symbol}: realised volatility over the trailing {window_min:.0f} min window",
        "sqrt(variance), bp of log price",
        volatility(features),
    )
    negative = sum(f.tsrv is not None and f.tsrv < 0 for f in features)
    vol_note = (
        f'<p class="note">{negative} bar(s) with a negative TSRV (its small-sample adjustment) have no '
        f"volatility: left out of its line.</p>"
        if negative
        else ""
    )
    state_src = contexts or features  # the state is in both; a features-only replay has no contexts
    events = ssr_luld_events(state_src)
    lanes = [
        (
            "SSR/LULD",
            runs([(r.window_end_ns, r.ssr_luld_state) for r in state_src], bar_ns, SSR_LULD_COLOURS, "SSR/LULD"),
        )
    ]
    if contexts:
        lanes.append(("RAG", runs([(c.window_end_ns, c.rag_status) for c in contexts], bar_ns, RAG_COLOURS, "RAG")))
    states = lanes_chart(
        axis,
        f"{symbol}: SSR/LULD state and RAG status per bar (red lines: SSR/LULD changes)",
        lanes,
        [("SSR/LULD:", ""), *SSR_LULD_COLOURS.items(), ("RAG:", ""), *RAG_COLOURS.items()],
        [(t, f"{_hm(t)} ET {a} -> {b}") for t, a, b in events],
    )
    rows = "".join(
        f"<tr><td>{new_york_time(t):%Y-%m-%d %H:%M} ET</td><td>{a}</td><td>{b}</td></tr>" for t, a, b in events
    )
    event_table = (
        f"<table><tr><th>bar end</th><th>from</th><th>to</th></tr>{rows}</table>"
        if events
        else "<p>No SSR/LULD state changes.</p>"
    )
    return (
        f'<section class="symbol" id="{_slug(i, symbol)}" data-symbol="{escape(symbol)}">'
        f"<h2>{escape(symbol)}</h2>{price}"
        f'<p class="note">{" ".join(notes)}</p>{vol_chart}{vol_note}{states}<h3>SSR/LULD events</h3>{event_table}'
        f'<p><a href="#top">back to top</a></p></section>'
    )


def latency_section(contexts: list[ContextRecord]) -> str:
    lat = np.array([c.latency.total_ms for c in contexts if c.latency is not None])
    if not lat.size:
        return f"<p>{NO_LATENCY}: replayed contexts carry no wall-clock latencies.</p>"
    hi = float(np.percentile(lat, 99.9)) or 1.0
    counts, edges = np.histogram(np.minimum(lat, hi), bins=20, range=(0.0, hi))
    p50, p99 = np.percentile(lat, [50, 99])
    return bar_chart(
        f"Latency per context: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat.max():.2f} ms",
        "total ms per inference chunk (the last bin holds everything above p99.9)",
        "contexts",
        [f"{a:.3g}" for a in edges[:-1]],
        counts.tolist(),
    )


def dead_letter_section(dead: list[DeadLetter]) -> str:
    if not dead:
        return "<p>No dead letters.</p>"
    reasons = Counter(d.reason for d in dead).most_common()
    example: dict[str, str] = {}
    for d in dead:
        example.setdefault(d.reason, d.detail)
    rows = "".join(
        f"<tr><td>{escape(r)}</td><td class='n'>{n:,}</td><td>{escape(example[r][:200])}</td></tr>" for r, n in reasons
    )
    return (
        bar_chart(
            "Dead letters by reason",
            "reason",
            "dead letters",
            [r for r, _ in reasons],
            [n for _, n in reasons],
            colour="#e6550d",
        )
        + f"<table><tr><th>reason</th><th>count</th><th>first detail</th></tr>{rows}</table>"
    )


def render(day: Day) -> str:
    """The whole page."""
    contexts = by_symbol(day.contexts)
    features: dict[str, list[FeatureRecord]] = {}
    for f in sorted(day.features, key=lambda f: (f.symbol, f.window_end_ns)):
        features.setdefault(f.symbol, []).append(f)
    symbols = sorted(contexts.keys() | features.keys())
    ends = {s: [r.window_end_ns for r in contexts.get(s) or features[s]] for s in symbols}
    bar_ns = bar_length_ns(ends)
    axis = TimeAxis.over([(e - bar_ns, e) for v in ends.values() for e in v])
    dates = [f"{new_york_time(s):%a %Y-%m-%d}" for s, _ in axis.days]
    rates = regime_change_rates(contexts)
    regime_rate = (
        f"max {max(rates):.1%}, mean {np.mean(rates):.1%} of bars per symbol-day (budget 5%)"
        if rates and any(c.regime for c in day.contexts)
        else "no regimes"
    )
    header = [
        ("input", "<br>".join(f"{k}: {escape(str(p))}" for k, p in day.sources.items())),
        ("ET days", ", ".join(dates) or "none"),
        ("symbols", f"{len(symbols):,}"),
        ("bars (feature records)", f"{len(day.features):,}"),
        ("contexts", f"{len(day.contexts):,}"),
        ("dead letters", f"{len(day.dead):,}"),
        ("fail-open rate", f"{fail_open_rate(day.contexts):.2%} of contexts went out without RAG"),
        ("regime change rate", regime_rate),
        ("bar length", f"{bar_ns / 1e9:g} s"),
        ("model", escape(", ".join(sorted({c.model_version for c in day.contexts})) or "none")),
    ]
    toc = "".join(
        f'<tr class="toc" data-symbol="{escape(s)}"><td><a href="#{_slug(i, s)}">{escape(s)}</a></td>'
        f'<td class="n">{len(features.get(s, [])):,}</td><td class="n">{len(contexts.get(s, [])):,}</td>'
        f'<td class="n">{len(ssr_luld_events(contexts.get(s) or features[s]))}</td>'
        f'<td class="n">{fail_open_rate(contexts.get(s, [])):.1%}</td></tr>'
        for i, s in enumerate(symbols)
    )
    sections = "".join(
        symbol_section(i, s, contexts.get(s, []), features.get(s, []), axis, bar_ns) for i, s in enumerate(symbols)
    )
    swatches = "".join(f'<span class="sw"><i style="background:{c}"></i>{r}</span>' for r, c in REGIME_COLOURS.items())
    title = f"hrmcond day report: {', '.join(dates) or 'no bars'}"
    return PAGE.format(
        title=escape(title),
        css=CSS,
        head_js=HEAD_JS,
        js=JS,
        swatches=swatches,
        header="".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in header),
        toc=toc,
        latency=latency_section(day.contexts),
        dead=dead_letter_section(day.dead),
        sections=sections,
    )


def write_report(day: Day, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(day), encoding="utf-8")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;max-width:1000px}
h1{font-size:22px;margin:16px 0 8px}h2{margin:28px 0 4px;border-top:2px solid #ccc;padding-top:10px}
h3{font-size:14px;margin:8px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px;text-align:left;vertical-align:top}
th{font-weight:600}tr:nth-child(even){background:#f6f6f6}td.n{text-align:right}
.legend{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd;z-index:1}
.sw{margin-right:14px;white-space:nowrap}.sw i{display:inline-block;width:14px;height:14px;margin-right:4px;
vertical-align:-2px;border:1px solid #888}
.note{color:#555;font-size:12px;margin:0 0 8px}#js-errors{color:#b00;white-space:pre}
svg.chart{display:block;margin:4px 0;font:11px system-ui,sans-serif}
svg .title{font-weight:600;font-size:13px}svg .tick{text-anchor:middle;fill:#444}
svg .ytick{text-anchor:end;fill:#444}svg .label{text-anchor:middle;fill:#222}
svg .grid{stroke:#000;stroke-opacity:.12}svg .axis{stroke:#444}svg .event{stroke:#a50f15;stroke-width:1.5}
"""

#: Loaded first: any later script error lands in the page, where the browser test reads it.
HEAD_JS = """
window.onerror = function (msg, src, line) {
  var e = document.getElementById('js-errors') || document.documentElement;
  e.setAttribute('data-errors', 'yes'); e.textContent += msg + ' (line ' + line + ')\\n';
};
"""

#: The filter hides the symbols not matching (tens of symbols); the marker says the page's script ran to the end.
JS = """
var filter = document.getElementById('filter');
filter.addEventListener('input', function () {
  var q = filter.value.trim().toUpperCase();
  document.querySelectorAll('[data-symbol]').forEach(function (el) {
    el.hidden = q !== '' && el.getAttribute('data-symbol').toUpperCase().indexOf(q) < 0;
  });
});
var charts = document.querySelectorAll('svg.chart');
charts.forEach(function (svg) { if (!(svg.getBBox().width > 0)) throw new Error('empty chart'); });
document.body.setAttribute('data-rendered', String(charts.length));
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style><script>{head_js}</script>
</head><body><a id="top"></a><h1>{title}</h1><pre id="js-errors"></pre>
<table>{header}</table>
<div class="legend"><b>Regime colours:</b> {swatches}</div>
<h2>Whole run</h2><h3>Latency</h3>{latency}<h3>Dead letters</h3>{dead}
<h2>Symbols</h2><p><label>filter symbols <input id="filter" type="search"></label></p>
<table><tr><th>symbol</th><th>bars</th><th>contexts</th><th>SSR/LULD events</th><th>fail-open</th></tr>{toc}</table>
{sections}
<script>{js}</script></body></html>
"""
