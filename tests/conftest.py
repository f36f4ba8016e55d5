"""Session-wide fixtures: the real sample data beside the checkout."""

from __future__ import annotations

import contextlib
import functools
import os
import urllib.parse
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
    """What Kafka tests get: client settings, plus ``broker.pause()``/``resume()`` where the broker is ours."""

    def __init__(self, bootstrap_servers: str, kind: str, broker: object | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kind = kind
        self.broker = broker

    @property
    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}


class ContainerBroker:
    """Pause/resume for a broker in a container, through the container API (the cgroup freezer: like the
    embedded broker's SIGSTOP, clients see a broker that stops answering and loses nothing)."""

    def __init__(self, container) -> None:
        self.container = container  # a testcontainers DockerContainer

    def pause(self) -> None:
        self.container.get_wrapped_container().pause()

    def resume(self) -> None:
        self.container.get_wrapped_container().unpause()


# tests/with_container_api.sh (which `make test` runs) sets these: the path it prepared and why.
PATH_ENV, REASON_ENV = "HRMCOND_KAFKA_PATH", "HRMCOND_KAFKA_PATH_REASON"
TANSU_PORT = 9092
_started: dict[str, str] = {}  # what the session fixture really started, for the summary


def _container_api() -> str | None:
    """``"Podman Engine 4.3.1 at unix:///..."`` when a Docker-compatible API answers, else None."""
    try:
        import docker

        version = docker.from_env(timeout=3).version()
    except Exception:
        return None
    name = next((c.get("Name", "") for c in version.get("Components") or []), "") or "Docker engine"
    return f"{name} {version.get('Version', '?')} at {os.environ.get('DOCKER_HOST', 'the default socket')}"


def tansu_image() -> str:
    """The embedded broker's binary as an image, tagged by the binary's hash (as tests/with_container_api.sh
    builds it; the README has the same recipe for Docker)."""
    if os.environ.get("HRMCOND_TANSU_IMAGE"):
        return os.environ["HRMCOND_TANSU_IMAGE"]
    import hashlib

    from flows.broker import broker_binary

    return f"localhost/hrmcond-tansu:{hashlib.sha256(Path(broker_binary()).read_bytes()).hexdigest()[:12]}"


@functools.cache
def kafka_path() -> tuple[str, str]:
    """(kind, why) of the session broker: ``external``, ``testcontainers`` or ``embedded``; decided once."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external", f"KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
    chosen, why = os.environ.get(PATH_ENV), os.environ.get(REASON_ENV, "")
    if chosen == "embedded":
        return "embedded", why
    api = _container_api()
    if api:
        try:
            image = os.environ.get("HRMCOND_KAFKA_IMAGE") or tansu_image()
        except Exception as err:  # no broker binary: the fixture reports it where a Kafka test needs it
            image = f"unknown ({err})"
        return "testcontainers", why or f"{api}, image {image}"
    if chosen == "testcontainers":  # the set-up prepared an API that is gone: test_broker_path fails on this
        return "embedded", f"the set-up chose testcontainers ({why}) but no container API answers"
    return "embedded", "no container API answers (run `make test`, or set DOCKER_HOST)"


def pytest_report_header(config) -> str:
    kind, why = kafka_path()
    return f"kafka broker: {kind} ({why})"


def pytest_terminal_summary(terminalreporter) -> None:
    kind, why = kafka_path()
    if _started:
        line = f"kafka broker: {_started['kind']} ({why})"
    else:
        line = f"kafka broker: none started (no Kafka test ran; the path would be {kind})"
    terminalreporter.write_sep("-", "kafka broker path")
    terminalreporter.write_line(line)


def _engine_host() -> str:
    """Where the engine's mapped ports are reached: the host of a tcp:// DOCKER_HOST, else this machine.

    Not testcontainers' guess: it takes this machine (it has a /.dockerenv) for a container and answers with a
    network gateway, which a local engine's mapped port is not on.
    """
    override = os.environ.get("TESTCONTAINERS_HOST_OVERRIDE") or os.environ.get("TC_HOST")
    if override:
        return override
    url = urllib.parse.urlparse(os.environ.get("DOCKER_HOST", ""))
    if url.scheme in ("tcp", "http", "https") and url.hostname and url.hostname != "localhost":
        return url.hostname
    return "127.0.0.1"  # librdkafka may resolve localhost to ::1


@contextlib.contextmanager
def _broker_container():
    """A broker container for the session -> (container, bootstrap servers). Removed on exit."""
    labels = {"hrmcond.test-run": os.environ.get("HRMCOND_TEST_RUN", "pytest")}  # the set-up's cleanup key
    kafka_image = os.environ.get("HRMCOND_KAFKA_IMAGE")
    if kafka_image:  # a real Kafka image, where a registry is at hand
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.kafka import KafkaContainer
        with KafkaContainer(kafka_image).with_kwargs(labels=labels) as container:
            yield container, container.get_bootstrap_server()
        return

    import docker
    from testcontainers.core.container import DockerContainer

    from flows.broker import free_port

    image = tansu_image()
    try:
        docker.from_env(timeout=10).images.get(image)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"broker image {image} is not in the container engine: `make test` builds it "
            "(tests/with_container_api.sh); the README has the recipe",
            pytrace=False,
        )
    # Tansu advertises the address it is given: it must be the mapped host port, which is therefore chosen here
    # rather than by the engine.
    port = free_port()
    container = (
        DockerContainer(image)
        .with_bind_ports(TANSU_PORT, port)
        .with_env("LISTENER_URL", f"tcp://0.0.0.0:{TANSU_PORT}")
        .with_kwargs(labels=labels)
    )
    host = _engine_host()
    container.with_env("ADVERTISED_LISTENER_URL", f"tcp://{host}:{port}")
    with container:
        yield container, f"{host}:{port}"


def _wait_for_port(address: str, timeout_s: float) -> None:
    """Until the mapped port accepts: a Kafka client polled earlier logs each refused connect to stderr."""
    import socket
    import time

    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    # still refused: wait_for_broker reports it with the client's own error


@pytest.fixture(scope="session")
def kafka_cluster():
    """A Kafka-protocol broker for the whole session, on the path ``kafka_path()`` chose.

    ``$KAFKA_BOOTSTRAP_SERVERS`` (an external cluster) if set; else, when a container API answers (Docker, or
    the podman service that tests/with_container_api.sh starts), a broker container through testcontainers
    (``$HRMCOND_KAFKA_IMAGE``, a real Kafka image, if set; else the embedded broker's binary as an image); else
    the embedded Tansu broker (flows/broker.py). Torn down at session end.
    """
    kind, _ = kafka_path()
    _started["kind"] = kind
    if kind == "external":
        yield KafkaCluster(os.environ["KAFKA_BOOTSTRAP_SERVERS"], "external")
        return
    if kind == "testcontainers":
        # Ryuk, testcontainers' reaper, is an image from a registry; our containers are removed here (and by the
        # set-up's cleanup if the session is killed).
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        from flows.kafka import wait_for_broker

        with _broker_container() as (container, bootstrap):
            _wait_for_port(bootstrap, timeout_s=60)
            wait_for_broker({"bootstrap.servers": bootstrap}, timeout_s=60)
            yield KafkaCluster(bootstrap, "testcontainers", ContainerBroker(container))
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
