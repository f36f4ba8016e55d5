"""The live source's batches as per-symbol blocks give exactly what message by message gives: the same ticks
with their messages, the same heartbeats at the same places, the same partition clock, and through the bar step
the same bars and dead letters (original bytes and offsets), on a stream with reordering, late ticks, re-sent
ticks, a far-ahead tick, a status, a refused message and a key mismatch."""

from __future__ import annotations

import numpy as np
import pytest

import flows.sources.kafka as source
from flows.bars import Heartbeat, Received, SymbolLogic, TickBlock
from flows.config import load_config
from flows.feature_records import feature_record
from schemas.records import DeadLetter

from .kafka_fakes import FakeConsumer, FakeMessage

OPEN = 1_709_562_600_000_000_000  # 2024-03-04 09:30 ET
S = 10**9
SYMBOLS = ("AAA", "BBB", "CCC")


def stream(rng: np.random.Generator, n: int = 4000) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of ``n`` messages over about 12 minutes (bars of 60 s), with the faults of the docstring."""
    out: list[tuple[bytes | None, bytes]] = []
    seq = dict.fromkeys(SYMBOLS, 0)
    resend: dict[int, list[tuple[bytes, bytes]]] = {}
    for i in range(n):
        symbol = SYMBOLS[rng.integers(len(SYMBOLS))]
        ts = OPEN + i * 180_000_000 - int(rng.integers(0, 1_500_000_000) if rng.random() < 0.05 else 0)
        if rng.random() < 0.003:
            ts -= 10 * S  # beyond the allowed lateness: late
        if rng.random() < 0.5:
            body = b'"kind":"trade","price":%.2f,"size":%d' % (100 + rng.normal(), rng.integers(1, 500))
        else:
            bid = 100 + rng.normal()
            body = b'"kind":"quote","bid":%.2f,"bid_size":3,"ask":%.2f,"ask_size":4' % (bid, bid + 0.02)
        raw = b'{%s,"symbol":"%s","ts_ns":%d,"seq":%d}' % (body, symbol.encode(), ts, seq[symbol])
        seq[symbol] += 1
        out.append((symbol.encode(), raw))
        if rng.random() < 0.01:  # re-sent a little later: a duplicate, in the same block or another one
            resend.setdefault(i + int(rng.integers(0, 10)), []).append((symbol.encode(), raw))
        out += resend.pop(i, [])
    trade = b'{"kind":"trade","symbol":"AAA","ts_ns":%d,"price":%s,"size":1}'
    faults = [
        (b"AAA", trade % (OPEN + 100 * S, b'"10"')),  # a price as a string: refused
        (b"BBB", trade % (OPEN + 200 * S, b"10")),  # under another symbol's key
        (b"AAA", trade % (OPEN + 3600 * S, b"10")),  # an hour ahead
        (b"AAA", b'{"kind":"status","symbol":"AAA","ts_ns":%d,"ssr":true}' % (OPEN + 500 * S)),
    ]
    for k, fault in enumerate(faults, 1):
        at = k * len(out) // (len(faults) + 1)
        out[at:at] = [fault]
    return out


def read(monkeypatch, messages, sizes, blocks: bool) -> tuple[list, source._TickPartition]:
    """Everything the partition emits for ``messages`` consumed in batches of ``sizes``."""
    monkeypatch.setattr(source, "Consumer", FakeConsumer)
    if not blocks:
        monkeypatch.setattr(source._TickPartition, "_blocks", lambda self, msgs: None)
    part = source._TickPartition(load_config("deploy/local.yaml", env={}), "ticks", 0, 1, until_eof=False, resume=None)
    msgs = [FakeMessage(i, value, key) for i, (key, value) in enumerate(messages)]
    cuts = np.cumsum(sizes)
    part.consumer.batches = [msgs[a:b] for a, b in zip([0, *cuts], [*cuts, len(msgs)], strict=False) if a < b]
    out: list = []
    while part.consumer.batches:
        out += part.next_batch()
    monkeypatch.undo()
    return out, part


def flat(out: list) -> tuple[list[DeadLetter], dict[str, list]]:
    """The dead letters, and each symbol's items with its blocks as the messages they hold."""
    dead = [x for x in out if isinstance(x, DeadLetter)]
    items: dict[str, list] = {}
    for symbol, values in (x for x in out if not isinstance(x, DeadLetter)):
        for v in values:
            items.setdefault(symbol, []).extend(v.items() if isinstance(v, TickBlock) else [v])
    return dead, items


def dead_letter(dl: DeadLetter) -> tuple:
    return (dl.reason, dl.detail, dl.raw_b64, dl.key, dl.topic, dl.partition, dl.offset)


def bar_step(out: list) -> list:
    """The partition's output through the bar step, a symbol at a time: bars, dead letters, heartbeats."""
    cfg = load_config("deploy/local.yaml", env={}).pipeline
    logics: dict[str, SymbolLogic] = {}
    result: list = []
    for symbol, values in (x for x in out if not isinstance(x, DeadLetter)):
        result += logics.setdefault(symbol, SymbolLogic(cfg)).on_item(values)[0]
    for logic in logics.values():
        result += logic.on_eof()[0]
    return [
        feature_record(x).model_dump_json() if not isinstance(x, DeadLetter | Heartbeat) else x
        for x in result
        if not isinstance(x, DeadLetter)
    ] + sorted(dead_letter(x) for x in result if isinstance(x, DeadLetter))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_blocks_give_what_message_by_message_gives(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    messages = stream(rng)
    sizes = rng.integers(1, 400, len(messages))
    by_block, part = read(monkeypatch, messages, sizes, blocks=True)
    one_by_one, reference = read(monkeypatch, messages, sizes, blocks=False)
    blocks = sum(isinstance(v, TickBlock) for x in by_block if not isinstance(x, DeadLetter) for v in x[1])
    received = sum(isinstance(v, Received) for x in by_block if not isinstance(x, DeadLetter) for v in x[1])
    assert blocks > 20 and received > 20  # both ways were taken (a batch with a fault goes message by message)
    assert part.clock == reference.clock and part.offset == reference.offset == len(messages)
    (dead, items), (dead_ref, items_ref) = flat(by_block), flat(one_by_one)
    assert [dead_letter(d) for d in dead] == [dead_letter(d) for d in dead_ref]
    assert [d.reason for d in dead] == ["invalid_value", "key_mismatch"]
    assert items == items_ref
    assert sum(isinstance(v, Heartbeat) for values in items.values() for v in values) > 30
    stepped, stepped_ref = bar_step(by_block), bar_step(one_by_one)
    assert stepped == stepped_ref
    reasons = {x[0] for x in stepped if isinstance(x, tuple)}
    assert {"late", "duplicate", "future"} <= reasons  # the bar step refused some, with the original messages
