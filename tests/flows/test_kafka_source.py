"""The live source's one use of the wall clock: an idle partition's event time runs on only while the broker
confirms the partition is at its head; a silent broker holds the clock, is warned about, then ends the run."""

from __future__ import annotations

import logging

import pytest
from bytewax.inputs import AbortExecution

import flows.sources.kafka as source
from flows.bars import Heartbeat
from flows.config import load_config
from flows.lifecycle import STOP

from .kafka_fakes import FakeConsumer, FakeMessage

OPEN = 1_709_562_600_000_000_000  # 2024-03-04 09:30 ET
S = 10**9


@pytest.fixture
def partition(monkeypatch):
    monkeypatch.setattr(source, "Consumer", FakeConsumer)
    clock = [1000.0]
    monkeypatch.setattr(source.time, "monotonic", lambda: clock[0])
    cfg = load_config(
        "deploy/local.yaml", env={"HRMCOND__KAFKA__STALL_WARNING_S": "5", "HRMCOND__KAFKA__UNAVAILABLE_AFTER_S": "30"}
    )
    part = source._TickPartition(cfg, "ticks", 0, 1, until_eof=False, resume=None)
    trades = [b'{"kind":"trade","symbol":"AAA","ts_ns":%d,"price":10,"size":1}' % (OPEN + i * S) for i in range(3)]
    part.consumer.batches = [[FakeMessage(i, raw) for i, raw in enumerate(trades)] + [FakeMessage(3, None, eof=True)]]
    part.head.high = 3
    part.next_batch()
    assert part.at_head and part.clock.now_ns == OPEN + 2 * S
    STOP.reset()
    yield part, clock
    STOP.reset()


def idle_for(part, clock, seconds: float) -> list:
    """Poll an idle partition once a second for ``seconds`` of wall time; what it emitted."""
    out = []
    for _ in range(int(seconds)):
        clock[0] += 1.0
        out += [x for _, items in part.next_batch() for x in items]  # the symbols' lists (flows/bars.py by_symbol)
    return out


def test_a_confirmed_idle_head_lets_event_time_run_on(partition):
    part, clock = partition
    beats = [x for x in idle_for(part, clock, 70) if isinstance(x, Heartbeat)]
    # 70 s after the newest tick, less idle_close_ms (5 s): the 09:31 boundary has been passed
    assert beats and max(b.ts_ns for b in beats) == OPEN + 60 * S
    assert {b.symbol for b in beats} == {"AAA", "@ticks[0]"}
    # asked on a connection of its own: on the consumer's, the query waits behind its fetch at the head
    assert part.head.queries >= 60 and part.consumer.queries == 0


def test_a_frozen_broker_holds_the_clock_warns_then_stops_the_run(partition, caplog):
    part, clock = partition
    part.head.frozen = True
    with caplog.at_level(logging.WARNING, logger="flows.lifecycle"):
        held = idle_for(part, clock, 20)
    assert clock[0] - 1000.0 >= 20 > part.idle_close_ns / 1e9  # the wall clock moved past the idle grace
    assert held == [] and part.clock.now_ns == OPEN + 2 * S  # ... and nothing was closed for it
    assert any("no answer from Kafka" in r.getMessage() for r in caplog.records)
    with pytest.raises(AbortExecution):
        idle_for(part, clock, 15)  # past unavailable_after_s (30 s)
    assert STOP.requested.is_set() and "has not answered" in str(STOP.error) and STOP.error.exit_code == 3


def test_more_data_on_the_broker_is_not_idleness(partition):
    part, clock = partition
    part.head.high = 10  # the broker holds messages the consumer has not fetched yet
    assert idle_for(part, clock, 70) == []
