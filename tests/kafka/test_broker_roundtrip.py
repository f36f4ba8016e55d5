"""The broker fixture works end to end: produce keyed records with delivery checks, consume them all back."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from flows.kafka import CheckedProducer
from schemas.errors import DeliveryError
from schemas.ticks import Trade, decode_tick, encode_tick

pytestmark = pytest.mark.kafka

T0 = 1_514_903_400_000_000_000  # 2018-01-02 14:30 UTC


def consume_all(conf: dict[str, str], topic: str, partitions: int, expected: int, timeout_s: float = 20.0):
    consumer = Consumer({**conf, "group.id": "test", "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
    finally:
        consumer.close()
    return out


def test_produce_and_consume_ticks(kafka_cluster, kafka_topics):
    topic = kafka_topics("ticks")["ticks"]
    symbols = ["AAPL", "MSFT", "XXX", "BRK.B"]
    sent = [Trade(symbol=symbols[i % 4], ts_ns=T0 + i, price=100 + i / 100, size=100) for i in range(2000)]
    producer = CheckedProducer(kafka_cluster.client_config)
    for tick in sent:
        producer.produce(topic, encode_tick(tick), key=tick.symbol)
    producer.flush()
    assert producer.delivered == len(sent)

    got = consume_all(kafka_cluster.client_config, topic, 3, len(sent))
    assert len(got) == len(sent)
    decoded = [decode_tick(m.value()) for m in got]
    assert sorted(decoded, key=lambda t: t.ts_ns) == sent
    # Keyed by symbol: every symbol lands in exactly one partition, so per-symbol order is kept.
    partitions_of: dict[str, set[int]] = {}
    for m in got:
        partitions_of.setdefault(m.key().decode(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of.values())
    for sym in symbols:
        ts = [decode_tick(m.value()).ts_ns for m in got if m.key().decode() == sym]
        assert ts == sorted(ts)


def test_failed_delivery_raises(kafka_cluster, kafka_topics):
    if kafka_cluster.broker is None:
        pytest.skip("needs a broker the session can pause (an external cluster is in use)")
    topic = kafka_topics("out")["out"]
    producer = CheckedProducer({**kafka_cluster.client_config, "message.timeout.ms": "1500"}, flush_timeout_s=10)
    kafka_cluster.broker.pause()
    try:
        producer.produce(topic, b"{}", key="K")
        with pytest.raises(DeliveryError, match="failed"):
            producer.flush()
    finally:
        kafka_cluster.broker.resume()
    producer.produce(topic, b"{}", key="K")
    producer.flush()
    assert producer.delivered == 1


def test_broker_command_serves_the_configured_topics_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from confluent_kafka.admin import AdminClient

    from flows.broker import free_port

    port = free_port()
    config = Path(__file__).resolve().parents[2] / "deploy" / "local.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "broker", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in first, first
        topics = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10).topics
        assert {"ticks", "contexts", "features", "dead-letter"} <= set(topics)
        assert len(topics["ticks"].partitions) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
