"""Inline SVG charts for the day report: a time axis over the trading sessions, line charts with coloured
bands behind them, categorical lanes (one coloured run per state), histograms and horizontal bars.

Plain strings, no plotting library: the page must open without network, and these four shapes are all it
needs. Every chart has a title, labelled axes with units, and a legend where it has more than one colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

from schemas.session import new_york_time, trading_date

WIDTH = 960
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 30, 40
TICK_MINUTES = (1, 5, 10, 15, 30, 60, 120)
#: Pixels between two session days on the time axis (the night is cut out, not drawn to scale).
DAY_GAP = 16


@dataclass(frozen=True)
class TimeAxis:
    """Event time (ns) -> x pixel, with each ET day's ``[first, last]`` span side by side and the nights cut
    out, so that a two-day replay is not mostly an empty overnight gap. Shared by every chart of a page so
    that the symbols' charts line up."""

    days: tuple[tuple[int, int], ...]

    @classmethod
    def over(cls, spans: Sequence[tuple[int, int]]) -> TimeAxis:
        """The axis covering ``(start_ns, end_ns)`` spans (bars), one segment per ET date."""
        by_day: dict[date, list[int]] = {}
        for start, end in spans:
            by_day.setdefault(trading_date(start), []).extend((start, end))
        return cls(tuple((min(v), max(v)) for _, v in sorted(by_day.items())))

    @property
    def _scale(self) -> float:
        inner = WIDTH - LEFT - RIGHT - DAY_GAP * (len(self.days) - 1)
        return inner / max(1, sum(e - s for s, e in self.days))

    def x(self, t_ns: int) -> float:
        left: float = LEFT
        for start, end in self.days:
            if t_ns <= end:
                return left + max(0, t_ns - start) * self._scale
            left += (end - start) * self._scale + DAY_GAP
        return WIDTH - RIGHT

    def ticks(self) -> list[tuple[float, str]]:
        """Round ET times inside each day, every 1, 5, 10, 15 or 30 minutes or 1 or 2 hours, whichever is the
        first at least 60 px apart; the date at the day's start."""
        out = []
        for start, end in self.days:
            step = next((m for m in TICK_MINUTES if m * 6e10 * self._scale >= 60), TICK_MINUTES[-1])
            out.append((self.x(start), new_york_time(start).strftime("%a %d %b")))
            midnight = new_york_time(start).replace(hour=0, minute=0, second=0, microsecond=0)
            minute = (int((start - midnight.timestamp() * 1e9) // 6e10) // step + 1) * step
            while (ns := int((midnight + timedelta(minutes=minute)).timestamp() * 1e9)) <= end:
                # room for the date label at the day's start and for the next day's at its end
                if self.x(ns) - self.x(start) > 90 and self.x(end) - self.x(ns) > 20:
                    out.append((self.x(ns), new_york_time(ns).strftime("%H:%M")))
                minute += step
        return out


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not hi > lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _frame(
    title: str, height: int, body: list[str], legend: Sequence[tuple[str, str]] = (), legend_below: bool = False
) -> str:
    """The chart's box and title; the legend right-aligned beside the title, or, for a long one that would run
    into the title, left-aligned in a row of its own at the bottom (``height`` must leave room for it). An
    entry with an empty colour names the group of entries after it."""
    items, x = [], WIDTH - RIGHT
    widths = [7 * len(label) + 26 for label, _ in legend]  # about 7 px per character at 11 px
    if legend_below:
        x, y = LEFT + sum(widths), height - 16
    else:
        y = 10
    for (label, colour), w in zip(reversed(legend), reversed(widths), strict=True):  # laid out from the right
        x -= w
        if colour:
            items.append(
                f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}" stroke="#555" '
                f'stroke-width="0.5"/><text x="{x + 16}" y="{y + 10}">{escape(label)}</text>'
            )
        else:  # a group's name
            items.append(f'<text x="{x + 16}" y="{y + 10}" font-weight="600">{escape(label)}</text>')
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img"><title>{escape(title)}</title>'
        f'<text class="title" x="{LEFT}" y="20">{escape(title)}</text>{"".join(items)}{"".join(body)}</svg>'
    )


def _time_axis(axis: TimeAxis, top: int, bottom: int) -> list[str]:
    out = [f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" class="axis"/>']
    for x, label in axis.ticks():
        anchor = "" if ":" in label else ' style="text-anchor:start"'  # a date starts where its day starts
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 4}" class="grid"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" class="tick"{anchor}>{escape(label)}</text>'
        )
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{bottom + 34}" class="label">time (ET)</text>')
    return out


def _band(axis: TimeAxis, b: Band, y: float, height: float) -> str:
    width = max(0.5, axis.x(b.end_ns) - axis.x(b.start_ns))  # a one-bar run stays visible on a long day
    return (
        f'<rect x="{axis.x(b.start_ns):.1f}" y="{y}" width="{width:.1f}" height="{height}" fill="{b.colour}">'
        f"<title>{escape(b.label)}</title></rect>"
    )


def _y_label(text: str, top: float, bottom: float) -> str:
    return f'<text transform="translate(14 {(top + bottom) / 2}) rotate(-90)" class="label">{escape(text)}</text>'


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are ``(t_ns, y)``; a ``None`` y breaks the line (undefined there)."""

    name: str
    colour: str
    points: Sequence[tuple[int, float | None]]


@dataclass(frozen=True)
class Band:
    """A shaded time span ``[start_ns, end_ns)`` behind a chart; ``label`` shows on hover."""

    start_ns: int
    end_ns: int
    colour: str
    label: str


def line_chart(
    axis: TimeAxis,
    title: str,
    y_label: str,
    series: Sequence[Series],
    bands: Sequence[Band] = (),
    legend: Sequence[tuple[str, str]] | None = None,
    height: int = 230,
) -> str:
    """Lines over time, y in the units of ``y_label``, with ``bands`` shaded behind the plot area."""
    top, bottom = TOP, height - BOTTOM
    ys = [y for s in series for _, y in s.points if y is not None]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.1 or 1.0  # a flat line sits mid-chart, not on the frame
    lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi)

    def y(v: float) -> float:
        return bottom - (v - lo) / ((hi - lo) or 1) * (bottom - top)

    body = [_band(axis, b, top, bottom - top) for b in bands]
    for v in ticks:
        body.append(
            f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{WIDTH - RIGHT}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" class="ytick">{_fmt(v)}</text>'
        )
    body += _time_axis(axis, top, bottom)
    body.append(_y_label(y_label, top, bottom))
    for s in series:
        runs: list[list[str]] = [[]]
        for t, value in s.points:
            if value is None:
                runs.append([])
            else:
                runs[-1].append(f"{axis.x(t):.1f},{y(value):.1f}")
        body += [
            f'<polyline points="{" ".join(r)}" fill="none" stroke="{s.colour}" stroke-width="1.4">'
            f"<title>{escape(s.name)}</title></polyline>"
            for r in runs
            if r
        ]
    if not ys:
        body.append(f'<text x="{(LEFT + WIDTH) / 2}" y="{(top + bottom) / 2}" class="label">no defined values</text>')
    return _frame(title, height, body, [(s.name, s.colour) for s in series] if legend is None else legend)


def lanes_chart(
    axis: TimeAxis,
    title: str,
    lanes: Sequence[tuple[str, Sequence[Band]]],
    legend: Sequence[tuple[str, str]],
    events: Sequence[tuple[int, str]] = (),
) -> str:
    """One row per lane, each a sequence of coloured runs (a state held over ``[start, end)``); ``events`` are
    drawn as vertical ticks across all lanes with their label on hover."""
    lane_h, gap = 22, 6
    top = TOP + 4
    bottom = top + len(lanes) * (lane_h + gap)
    height = bottom + BOTTOM + 24  # + the legend row
    body = []
    for i, (name, runs) in enumerate(lanes):
        y0 = top + i * (lane_h + gap)
        body.append(f'<text x="{LEFT - 6}" y="{y0 + 15}" class="ytick">{escape(name)}</text>')
        body += [_band(axis, r, y0, lane_h) for r in runs]
    body += _time_axis(axis, top, bottom)
    body += [
        f'<line x1="{axis.x(t):.1f}" y1="{top - 4}" x2="{axis.x(t):.1f}" y2="{bottom}" class="event">'
        f"<title>{escape(label)}</title></line>"
        for t, label in events
    ]
    return _frame(title, height, body, legend, legend_below=True)


def bar_chart(
    title: str,
    x_label: str,
    y_label: str,
    labels: Sequence[str],
    counts: Sequence[int],
    colour: str = "#4c78a8",
    height: int = 230,
) -> str:
    """Vertical bars, one per label (histogram bins or categories), height = count."""
    top, bottom = TOP, height - BOTTOM
    ticks = nice_ticks(0, max(counts, default=1) or 1)
    hi = max(ticks[-1], *counts) if counts else ticks[-1]
    width = min(80, (WIDTH - LEFT - RIGHT) / max(1, len(counts)))  # a few categories: bars, not slabs
    body = []
    for v in ticks:
        yv = bottom - v / hi * (bottom - top)
        body.append(
            f'<line x1="{LEFT}" y1="{yv:.1f}" x2="{WIDTH - RIGHT}" y2="{yv:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{yv + 4:.1f}" class="ytick">{_fmt(v)}</text>'
        )
    every = max(1, math.ceil(len(labels) * 60 / (WIDTH - LEFT - RIGHT)))  # no overlapping labels
    for i, (label, n) in enumerate(zip(labels, counts, strict=True)):
        x, h = LEFT + i * width, n / hi * (bottom - top)
        body.append(
            f'<rect x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{max(1, width - 2):.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {n:,}</title></rect>'
        )
        if i % every == 0:
            body.append(f'<text x="{x + width / 2:.1f}" y="{bottom + 16}" class="tick">{escape(label)}</text>')
    body.append(
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" class="axis"/>'
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{bottom + 34}" class="label">{escape(x_label)}</text>'
        + _y_label(y_label, top, bottom)
    )
    return _frame(title, height, body)
