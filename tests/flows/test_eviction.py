"""Bounded per-symbol state: a symbol idle past pipeline.evict_idle_s is discarded by its partition clock's
last heartbeat (bar step, and the regime smoother after its bars); one that returns starts afresh."""

from __future__ import annotations

from bytewax.operators import StatefulLogic

from conditioning.features.state import BarFeatures
from flows.bars import Heartbeat, SymbolLogic
from flows.clock import EventClock
from flows.config import PipelineConfig
from schemas.ticks import Trade

OPEN = 1_709_562_600_000_000_000  # 2024-03-04 09:30 ET
S = 10**9
MIN = 60 * S


def trade(symbol: str, ts_ns: int, price: float = 10.0) -> Trade:
    return Trade(symbol=symbol, ts_ns=ts_ns, price=price, size=100)


class KeyedBars:
    """The keyed bar step as Bytewax runs it: one SymbolLogic per key, dropped when it returns DISCARD."""

    def __init__(self, cfg: PipelineConfig, evict_s: int | None):
        self.cfg = cfg
        self.clock = EventClock("ticks", 1, cfg.bar_ms * 10**6, evict_after_ns=None if evict_s is None else evict_s * S)
        self.logic: dict[str, SymbolLogic] = {}
        self.out: list = []
        self.most_live = 0

    def feed(self, ticks) -> None:
        for tick in ticks:
            for item in [*self.clock.observe(tick), tick]:
                logic = self.logic.setdefault(item.symbol, SymbolLogic(self.cfg))
                emitted, discard = logic.on_item([item])
                self.out += emitted
                if discard == StatefulLogic.DISCARD:
                    del self.logic[item.symbol]
            self.most_live = max(self.most_live, len(self.logic))

    def bars(self, symbol: str) -> list[BarFeatures]:
        return [b for b in self.out if isinstance(b, BarFeatures) and b.symbol == symbol]


def one_off_symbols(n: int) -> list[Trade]:
    """``n`` symbols, each trading three times within one minute, a new one every 5 s (~2 hours)."""
    return [trade(f"S{i:05d}", OPEN + i * 5 * S + j * 20 * S) for i in range(n) for j in range(3)]


def test_one_off_symbols_keep_only_the_recently_active_in_memory():
    ticks = sorted(one_off_symbols(1_440), key=lambda t: t.ts_ns)
    keep_all = KeyedBars(PipelineConfig(), evict_s=None)
    keep_all.feed(ticks)
    assert keep_all.most_live == 1_440 + 1  # the fault: every symbol ever seen stays (+ the clock's own key)
    bounded = KeyedBars(PipelineConfig(), evict_s=600)
    bounded.feed(ticks)
    # a symbol is dropped at the first bar boundary 10 min after its last tick: at most ~12 min of arrivals
    # (one every 5 s) are alive at once, whatever the length of the day
    assert bounded.most_live <= 12 * 12 + 2
    assert len(bounded.clock.symbols) <= 12 * 12
    assert [b.window_end_ns for b in bounded.out if isinstance(b, BarFeatures)] == [
        b.window_end_ns for b in keep_all.out if isinstance(b, BarFeatures)
    ]  # the same bars either way


def test_a_returning_symbol_starts_afresh():
    cfg = PipelineConfig(allowed_lateness_ms=0)
    first = [trade("AAA", OPEN + i * 20 * S, 10 + i / 100) for i in range(30)]  # 09:30-09:40
    back = [trade("AAA", OPEN + 40 * MIN + i * 20 * S, 11 + i / 100) for i in range(30)]  # 10:10-10:20
    pulse = [trade("BBB", OPEN + i * 30 * S) for i in range(100)]  # keeps the partition clock moving
    run = KeyedBars(cfg, evict_s=600)
    run.feed(sorted(first + back + pulse, key=lambda t: t.ts_ns))
    evicted = [x for x in run.out if isinstance(x, Heartbeat) and x.symbol == "AAA" and x.evict]
    assert len(evicted) == 1 and OPEN + 19 * MIN < evicted[0].ts_ns <= OPEN + 21 * MIN
    fresh = KeyedBars(cfg, evict_s=600)  # the same symbol, seen for the first time at 10:10
    fresh.feed(sorted(back + [t for t in pulse if t.ts_ns >= OPEN + 20 * MIN], key=lambda t: t.ts_ns))
    returned = [b for b in run.bars("AAA") if b.window_end_ns > OPEN + 40 * MIN]
    assert returned and [(b.window_end_ns, b.n_trades, b.rv, b.tsrv) for b in returned] == [
        (b.window_end_ns, b.n_trades, b.rv, b.tsrv) for b in fresh.bars("AAA")
    ]


def test_a_replay_with_evictions_conditions_the_returning_symbol_as_new(tmp_path):
    """Through the whole replay graph (the eviction markers pass the inference step and are dropped before the
    sinks): after its return, the evicted symbol's contexts are those of a symbol first seen then. (That its
    regime smoother goes too is checked in tests/flows/test_contexts.py: here its regimes happen to agree.)"""
    import numpy as np
    import pyarrow as pa

    from flows.config import load_config
    from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
    from flows.runner import run_process
    from schemas.canonical import CANONICAL_SCHEMA
    from schemas.records import ContextRecord

    rng = np.random.default_rng(3)
    away = [(OPEN + i * 20 * S, "AAA") for i in range(90)]  # 09:30-10:00
    back = [(OPEN + 60 * MIN + i * 20 * S, "AAA") for i in range(180)]  # back at 10:30, 30 min later
    pulse = [(OPEN + i * 15 * S, "BBB") for i in range(10 * 60)]  # keeps the clock moving until 12:00
    prices = dict(zip(sorted(away + back + pulse), 10 * np.exp(np.cumsum(rng.normal(0, 2e-3, 870))), strict=True))
    cfg = load_config("deploy/local.yaml", env={"HRMCOND__PIPELINE__EVICT_IDLE_S": "600"})

    def aaa_after_return(rows: list) -> list[tuple]:
        rows = sorted(rows)
        n = len(rows)
        table = pa.table(
            {
                "ts_ns": [t for t, _ in rows],
                "symbol": [s for _, s in rows],
                "kind": ["trade"] * n,
                "price": [prices[r] for r in rows],
                "size": np.full(n, 100.0),
                **{c: pa.nulls(n, pa.float64()) for c in ("bid", "bid_size", "ask", "ask_size")},
            },
            schema=CANONICAL_SCHEMA,
        )
        outputs = ReplayOutputs(tmp_path / f"ctx-{n}.jsonl")
        run_process(build_replay_flow(cfg, table, (), outputs))
        finish_replay(outputs)
        records = map(ContextRecord.model_validate_json, outputs.contexts.read_bytes().splitlines())
        return [
            (r.window_end_ns, r.regime_probs, r.regime)
            for r in records
            if r.symbol == "AAA" and r.window_end_ns > OPEN + 60 * MIN
        ]

    returned = aaa_after_return(away + back + pulse)
    assert len(returned) == 60 and returned == aaa_after_return(back + pulse)
