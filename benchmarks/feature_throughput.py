"""Feature-update throughput of SymbolFeatures on the real TAQ sample, ticks per second on one core.

Run: ``.venv/bin/python benchmarks/feature_throughput.py [SHARED_DATA_DIR]``; writes
``benchmarks/results/feature_throughput.json``. The TAQ sample (one NYSE stock, 2018-01-02/03, trades plus
the NBBO built across venues by ``flows.sources.taq``) is replayed through one ``SymbolFeatures`` with the
default pipeline settings (1-minute bars, 30-minute window, data-driven K), under two call schedules:

- ``dataflow`` (the headline figure): exactly the calls the dataflow makes. The sample goes through the
  replay source (``flows.sources.table``: tick models, event-time heartbeats; a one-sided quote is a dead
  letter there) and the per-symbol logic (``flows.bars.SymbolLogic``: reorder buffer, regular session only,
  ``close_bar`` at every in-session bar end and one catch-up ``close_bar`` across the night) with a recording
  ``SymbolFeatures``; the recorded ticks (taken one by one or as a columnar run, ``on_ticks``) and
  ``close_bar`` calls are then timed on a fresh instance, tick by tick (``on_trade``/``on_quote``), so the
  figure is the per-tick feature path alone (no pydantic, no reorder heap), with every bar close the dataflow
  would make. (The dataflow itself now takes most rows through ``on_ticks``, the same arithmetic in one loop.)
- ``every_bar`` (a stress schedule, the one this benchmark used first): every tick of the sample, pre-market
  included, and ``close_bar`` called once per bar end from the first tick to the last, the night's ~1,000
  empty bars one call each.

Reported per schedule: ticks/s of the whole replay (ticks and bar closes), the split between the per-tick path
(``on_trade``/``on_quote``, including the SSR/LULD tracker) and the bar closes, and the cost per close call.
Best of ``REPEATS`` runs, single thread (BLAS pinned to 1 thread).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
from results_file import write_results

from conditioning.features.batch import Ticks  # noqa: E402
from conditioning.features.state import BarFeatures, FeatureParams, SymbolFeatures  # noqa: E402
from flows.bars import SymbolLogic, SymbolState, feature_params  # noqa: E402
from flows.clock import clock_key  # noqa: E402
from flows.config import PipelineConfig  # noqa: E402
from flows.sources.table import ReplayInput, TableSource, _TablePartition  # noqa: E402
from flows.sources.taq import read_taq  # noqa: E402
from schemas.records import DeadLetter  # noqa: E402

REPEATS = 5
TARGET_TICKS_PER_S = 500_000
ROOT = Path(__file__).resolve().parents[1]
SYMBOL = "XXX"


@dataclass(frozen=True)
class Schedule:
    """A call sequence: ``columns`` are the ticks fed, in order (ts_ns, is_trade, price, size, bid, bid_size,
    ask, ask_size as Python lists); ``closes[i]`` are the ``close_bar`` ends called before tick ``i``
    (``i == len(ticks)``: after the last one)."""

    columns: tuple[list, ...]
    closes: dict[int, list[int]]

    @property
    def n_ticks(self) -> int:
        return len(self.columns[0])

    @property
    def n_trades(self) -> int:
        return sum(self.columns[1])


class _Recorder(SymbolFeatures):
    """A SymbolFeatures that also writes down every call the dataflow makes to it."""

    def __init__(self, symbol: str, params: FeatureParams) -> None:
        super().__init__(symbol, params)
        self.ticks: list[tuple] = []
        self.closes: dict[int, list[int]] = {}

    def on_trade(self, ts_ns: int, price: float, size: float) -> None:
        self.ticks.append((ts_ns, True, price, size, float("nan"), float("nan"), float("nan"), float("nan")))
        super().on_trade(ts_ns, price, size)

    def on_quote(self, ts_ns: int, bid: float, bid_size: float, ask: float, ask_size: float) -> None:
        self.ticks.append((ts_ns, False, float("nan"), float("nan"), bid, bid_size, ask, ask_size))
        super().on_quote(ts_ns, bid, bid_size, ask, ask_size)

    def on_ticks(self, ticks: Ticks) -> bool:
        # the bar step's columnar call for a run of rows (it does nothing where it returns False: the rows then
        # come one by one through on_trade / on_quote, recorded there)
        taken = super().on_ticks(ticks)
        if taken:
            self.ticks.extend(zip(*(c.tolist() for c in ticks.arrays()), strict=True))
        return taken

    def on_status(self, ts_ns: int, **status) -> None:
        raise NotImplementedError("the TAQ sample has no status messages; the timed loop would not replay one")

    def close_bar(self, window_end_ns: int) -> BarFeatures:
        self.closes.setdefault(len(self.ticks), []).append(window_end_ns)
        return super().close_bar(window_end_ns)


def dataflow_schedule(table: pa.Table, cfg: PipelineConfig) -> Schedule:
    """The calls ``flows.bars.SymbolLogic`` makes on the replay source's items (see the module docstring)."""
    recorder = _Recorder(SYMBOL, feature_params(cfg))
    logic = SymbolLogic(cfg, state=SymbolState(features=recorder))
    source = _TablePartition(ReplayInput(table, (), cfg.bar_ms * 1_000_000, "taq"), None)
    while True:
        try:
            batch = source.next_batch()
        except StopIteration:
            break
        for item in batch:
            if isinstance(item, DeadLetter):  # a one-sided quote: never reaches the features
                continue
            symbol, values = item
            if symbol == clock_key(TableSource.PART):  # the file clock's own heartbeats (the symbol has its own)
                continue
            if symbol != SYMBOL:
                raise ValueError(f"the TAQ sample should hold {SYMBOL} only, got {symbol}")
            logic.on_item(values)
    logic.on_eof()
    columns = tuple(list(c) for c in zip(*recorder.ticks, strict=True))
    return Schedule(columns, recorder.closes)


def every_bar_schedule(ticks: Ticks, bar_ns: int) -> Schedule:
    """Every tick, and a ``close_bar`` at every bar end from the first tick's bar to the last one's."""
    columns = tuple(
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
    )
    closes: dict[int, list[int]] = {}
    next_end = columns[0][0] - columns[0][0] % bar_ns + bar_ns
    for i, t in enumerate(columns[0]):
        while t >= next_end:
            closes.setdefault(i, []).append(next_end)
            next_end += bar_ns
    closes.setdefault(len(columns[0]), []).append(next_end)
    return Schedule(columns, closes)


def run_once(schedule: Schedule, params: FeatureParams) -> tuple[float, float]:
    """(seconds in the tick path, seconds in bar closes) of one timed replay of ``schedule``."""
    sf = SymbolFeatures(SYMBOL, params)
    on_trade, on_quote, close_bar = sf.on_trade, sf.on_quote, sf.close_bar
    closes = schedule.closes
    close_s = 0.0
    clock = time.perf_counter
    start = clock()
    for i, (t, trade, p, s, b, bs, a, a_s) in enumerate(zip(*schedule.columns, strict=True)):
        if i in closes:
            c0 = clock()
            for end in closes[i]:
                close_bar(end)
            close_s += clock() - c0
        if trade:
            on_trade(t, p, s)
        else:
            on_quote(t, b, bs, a, a_s)
    c0 = clock()
    for end in closes.get(schedule.n_ticks, ()):
        close_bar(end)
    end_s = clock()
    close_s += end_s - c0
    return end_s - start - close_s, close_s


def measure(schedule: Schedule, params: FeatureParams) -> dict:
    tick_s, close_s = min((run_once(schedule, params) for _ in range(REPEATS)), key=sum)
    n, calls = schedule.n_ticks, sum(len(v) for v in schedule.closes.values())
    ends = sorted(e for v in schedule.closes.values() for e in v)
    first_bar = ends[0] - params.bar_ns
    return {
        "ticks": n,
        "trades": schedule.n_trades,
        "quotes": n - schedule.n_trades,
        "close_bar_calls": calls,
        "bars_closed": (ends[-1] - first_bar) // params.bar_ns,
        "seconds_tick_path": round(tick_s, 4),
        "seconds_bar_closes": round(close_s, 4),
        "ticks_per_s_total": round(n / (tick_s + close_s)),
        "ticks_per_s_tick_path": round(n / tick_s),
        "us_per_close_call": round(1e6 * close_s / calls, 1),
    }


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    table = read_taq(data / "taq_XXX_20180102-03_trades.csv.gz", data / "taq_XXX_20180102-03_quotes.csv.gz")
    cfg = PipelineConfig()
    params = feature_params(cfg)
    schedules = {
        "dataflow": dataflow_schedule(table, cfg),
        "every_bar": every_bar_schedule(Ticks.from_canonical(table, SYMBOL), params.bar_ns),
    }
    figures = {name: measure(s, params) for name, s in schedules.items()}
    result = {
        "benchmark": "SymbolFeatures replay of the TAQ sample (XXX, 2018-01-02/03), 1 thread",
        "bar_ns": params.bar_ns,
        "lookback_ns": params.lookback_ns,
        "target_ticks_per_s": TARGET_TICKS_PER_S,
        "ticks_per_s_total": figures["dataflow"]["ticks_per_s_total"],
        "meets_target": figures["dataflow"]["ticks_per_s_total"] >= TARGET_TICKS_PER_S,
        "schedules": figures,
    }
    write_results("feature_throughput", result, echo=True)


if __name__ == "__main__":
    main()
