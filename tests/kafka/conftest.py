"""Helpers of the Kafka tests: the test configuration and reading a finished run's topics back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import yaml
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.config import AppConfig, load_config
from schemas.records import ContextRecord

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())


def make_config(tmp_path: Path, kafka_cluster, topics: dict[str, str], **pipeline) -> tuple[AppConfig, Path]:
    """deploy/local.yaml on the test broker (anything with ``bootstrap_servers``) and topics; a frozen library
    and a generous RAG deadline, so the output is a function of the input alone (test_pipeline.py tests the
    timeouts on purpose)."""
    data = {
        **BASE,
        "conditioning": {**BASE["conditioning"], "rag": {**BASE["conditioning"]["rag"], "timeout_ms": 5000}},
        "pipeline": {**BASE["pipeline"], "rag_online_updates": False, **pipeline},
        "kafka": {"bootstrap_servers": kafka_cluster.bootstrap_servers, "topics": {**topics, "partitions": 3}},
        "recovery": {"snapshot_interval_s": 0.5},
    }
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, env={}), path


def read_topic(conf: dict[str, str], topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Everything in ``topic`` (written by a run that has ended): read until every partition reports its end.
    (A pause between fetches is no end: waiting for a quiet spell instead lost the last records of a slow
    broker now and then.)"""
    consumer = Consumer(
        {**conf, "group.id": uuid.uuid4().hex, "enable.auto.commit": False, "enable.partition.eof": True}
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out, at_end, deadline = [], set(), time.monotonic() + timeout_s
    while at_end != set(parts):
        assert time.monotonic() < deadline, f"{topic}: no end reported for partitions {set(parts) - at_end}"
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        if msg.error() is None:
            out.append(msg.value())
            at_end.discard(msg.partition())
        elif msg.error().code() == KafkaError._PARTITION_EOF:
            at_end.add(msg.partition())
    consumer.close()
    return out


def contexts_of(conf, topic) -> dict[tuple[str, int], ContextRecord]:
    """Deduplicated by the idempotency key (symbol, window_end_ns), keeping the first, as consumers do."""
    out: dict[tuple[str, int], ContextRecord] = {}
    for raw in read_topic(conf, topic):
        rec = ContextRecord.model_validate_json(raw)
        out.setdefault(rec.key, rec)
    return out
