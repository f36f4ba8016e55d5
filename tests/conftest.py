"""Session-wide fixtures: the real sample data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HRMCOND_SHARED_DATA`` or ``../shared/data`` beside the checkout (the samples are not redistributed)."""
    return Path(os.environ.get("HRMCOND_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"real sample data not found at {path} (set HRMCOND_SHARED_DATA to the shared/data folder)")
    return path


class KafkaCluster:
    """What Kafka tests get: client settings, plus pause/resume where the broker is ours."""

    def __init__(self, bootstrap_servers: str, kind: str, broker: object | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kind = kind
        self.broker = broker

    @property
    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_cluster():
    """A Kafka-protocol broker for the whole session.

    ``$KAFKA_BOOTSTRAP_SERVERS`` (an external cluster) if set; else a testcontainers Kafka container when a
    Docker engine answers; else the embedded Tansu broker (flows/broker.py). Torn down at session end.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaCluster(external, "external")
        return
    if _docker_reachable():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield KafkaCluster(container.get_bootstrap_server(), "testcontainers")
        return
    from flows.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield KafkaCluster(broker.bootstrap_servers, "embedded", broker)


@pytest.fixture
def kafka_topics(kafka_cluster, request):
    """Factory: ``kafka_topics("ticks", "contexts")`` -> dict of unique, pre-created topic names (3 partitions).

    Random names per test keep tests independent on a shared or external cluster; deleted at teardown.
    """
    import uuid

    from flows.kafka import delete_topics, ensure_topics

    created: list[str] = []

    def make(*roles: str, partitions: int = 3) -> dict[str, str]:
        names = {role: f"t-{request.node.name[:40]}-{role}-{uuid.uuid4().hex[:8]}" for role in roles}
        names = {role: "".join(c if c.isalnum() or c in "._-" else "-" for c in n) for role, n in names.items()}
        ensure_topics(kafka_cluster.client_config, names.values(), partitions)
        created.extend(names.values())
        return names

    yield make
    if created:
        delete_topics(kafka_cluster.client_config, created)
