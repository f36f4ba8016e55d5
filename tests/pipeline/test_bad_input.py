"""No poison pills: every message the decoder or the bar step refuses becomes a dead letter with a reason,
carries its original bytes and origin, and leaves the symbol's state as it was. Each test first shows the
harm the message would do (or did, before), then that it is dead-lettered instead."""

from __future__ import annotations

import json

from bytewax.connectors.kafka import KafkaSourceMessage

from conditioning.features.state import BarFeatures
from flows.bars import Received, SymbolLogic
from flows.config import PipelineConfig
from flows.dataflow import decode_message
from schemas.records import DeadLetter
from schemas.ticks import Trade, decode_tick

OPEN = 1_514_903_400_000_000_000  # 2018-01-02 09:30:00 ET
S = 1_000_000_000
MIN = 60 * S


def cfg(**over) -> PipelineConfig:
    return PipelineConfig(**({"bar_ms": 60_000, "lookback_s": 1800, "allowed_lateness_ms": 2_000} | over))


def wire(t_ns: int, price: float = 100.0, symbol: str = "AAA", **extra) -> bytes:
    return json.dumps({"kind": "trade", "symbol": symbol, "ts_ns": t_ns, "price": price, "size": 100} | extra).encode()


def message(raw: bytes, key: bytes | None = b"AAA", offset: int = 0) -> KafkaSourceMessage:
    return KafkaSourceMessage(key, raw, topic="ticks", offset=offset, partition=1)


def received(t_ns: int, price: float = 100.0, offset: int = 0, **extra) -> Received:
    (item,) = decode_message(message(wire(t_ns, price, **extra), offset=offset))
    assert isinstance(item, Received)
    return item


def feed(logic: SymbolLogic, items) -> list:
    out = []
    for item in items:
        out += logic.on_item(item)[0]
    return out


def dead(out) -> list[DeadLetter]:
    return [x for x in out if isinstance(x, DeadLetter)]


def bars(out) -> list[BarFeatures]:
    return [x for x in out if isinstance(x, BarFeatures)]


def test_message_without_a_key_is_dead_lettered():
    raw = wire(OPEN)
    assert isinstance(decode_tick(raw), Trade)  # a valid tick: only its missing key is wrong
    (dl,) = decode_message(message(raw, key=None, offset=41))
    assert isinstance(dl, DeadLetter) and dl.reason == "missing_key" and "AAA" in dl.detail
    assert (dl.raw, dl.key, dl.topic, dl.partition, dl.offset) == (raw, None, "ticks", 1, 41)
    (other,) = decode_message(message(raw, key=b"BBB"))
    assert other.reason == "key_mismatch"
    (ok,) = decode_message(message(raw))
    assert isinstance(ok, Received) and ok.tick == decode_tick(raw) and ok.raw == raw


def test_late_tick_dead_letter_carries_the_original_message():
    logic = SymbolLogic(cfg(), wall_clock=False)
    raw = wire(OPEN + 12 * S) + b"  "  # the original bytes, not a re-encoding of the tick
    late = Received(decode_tick(raw), raw, "ticks", 2, 77)
    out = feed(logic, [received(OPEN + 10 * S), received(OPEN + 20 * S), late])
    (dl,) = dead(out)
    assert dl.reason == "late" and (dl.raw, dl.key, dl.topic, dl.partition, dl.offset) == (raw, "AAA", "ticks", 2, 77)
    # the reorder buffer holds ticks, not the messages they came in
    assert logic.state.pending and all(isinstance(t, Trade) for _, _, t in logic.state.pending)
