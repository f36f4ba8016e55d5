"""The session broker is on the path the set-up chose, and the embedded broker (the demo's) keeps working.

tests/with_container_api.sh exports HRMCOND_KAFKA_PATH: when it prepared a container API, a session that
quietly fell back to the embedded broker would leave the testcontainers path untested, so that is a failure.
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Consumer, TopicPartition

from flows.broker import EmbeddedBroker
from flows.kafka import CheckedProducer

pytestmark = pytest.mark.kafka


def test_the_session_broker_runs_on_the_path_the_setup_chose(kafka_cluster):
    chosen = os.environ.get("HRMCOND_KAFKA_PATH")
    if not chosen:
        pytest.skip("no set-up chose a path (`make test` runs tests/with_container_api.sh)")
    why = os.environ.get("HRMCOND_KAFKA_PATH_REASON", "")
    assert kafka_cluster.kind == chosen, f"the set-up chose {chosen} ({why}), the session used {kafka_cluster.kind}"
    if chosen != "testcontainers":
        return
    container = kafka_cluster.broker.container.get_wrapped_container()
    container.reload()
    assert container.status == "running"
    assert container.labels.get("hrmcond.test-run") == os.environ.get("HRMCOND_TEST_RUN")
    # the clients' port is the container's mapped port, not some other broker's
    mapped = {int(b["HostPort"]) for b in container.ports["9092/tcp"] or []}
    assert int(kafka_cluster.bootstrap_servers.rsplit(":", 1)[1]) in mapped


def test_embedded_broker_round_trip():
    """Whatever the session uses, the embedded broker that `make demo` runs is exercised directly."""
    topic = "roundtrip"
    with EmbeddedBroker(topics=[topic], partitions=2) as broker:
        producer = CheckedProducer(broker.client_config)
        for i in range(100):
            producer.produce(topic, str(i).encode(), key=f"k{i % 7}")
        producer.flush()
        assert producer.delivered == 100
        del producer  # before the broker stops: a live client would log its refused reconnects
        consumer = Consumer({**broker.client_config, "group.id": "t", "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
        got: list[int] = []
        try:
            for _ in range(200):
                if len(got) == 100:
                    break
                msg = consumer.poll(0.2)
                if msg is not None:
                    assert msg.error() is None, msg.error()
                    got.append(int(msg.value()))
        finally:
            consumer.close()
    assert sorted(got) == list(range(100))
    assert not broker.running
