"""Thin confluent-kafka adapters: topic administration and a producer that never loses a failure.

Bytewax's own ``KafkaSink`` has no delivery callback, so failed deliveries vanish; everything this project
produces goes through :class:`CheckedProducer`, which raises on the first failed delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from flows.lifecycle import BrokerUnavailableError, BrokerWatch
from schemas.errors import DeliveryError, HrmcondError

log = logging.getLogger(__name__)


def _describe(err: KafkaError) -> str:
    return f"{err.name()} (code {err.code()}): {err.str()}"


class _Repeats(logging.Filter):
    """Passes a message once per ``window_s``: a client retrying a dead broker repeats the same line for ever."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self.seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's lines carry a client name and counters; the text after the last "]: " is the message
        key = f"{record.levelno}:{record.getMessage().rsplit(']: ', 1)[-1]}"
        now = time.monotonic()
        if now - self.seen.get(key, -self.window_s) < self.window_s:
            return False
        self.seen[key] = now
        return True


#: librdkafka's own log lines (connection failures and the like) go through Python logging, once a minute
#: each, instead of straight to stderr hundreds of times.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
LIBRDKAFKA_LOG.addFilter(_Repeats())


def _on_client_error(err: KafkaError) -> None:
    # Client-level errors (all brokers down, transport failures) are retried by librdkafka itself; what the
    # run does about a broker that stays away is decided by the source's and sinks' watches (lifecycle.py).
    LIBRDKAFKA_LOG.warning("%s", _describe(err))


def client_callbacks() -> dict[str, Any]:
    """Settings every client of this project gets: its logs and errors routed through Python logging."""
    return {"logger": LIBRDKAFKA_LOG, "error_cb": _on_client_error}


def wait_for_broker(conf: Mapping[str, str], timeout_s: float = 30.0) -> None:
    """Block until the cluster answers a metadata request, or raise :class:`BrokerUnavailableError` (exit code 3)
    after ``timeout_s``."""
    admin = AdminClient(dict(conf))
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as err:
            last = err
            time.sleep(0.1)
    raise BrokerUnavailableError(
        f"Kafka at {conf.get('bootstrap.servers')} did not answer within {timeout_s:g} s: {last}"
    )


def ensure_topics(conf: Mapping[str, str], topics: Iterable[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet, and wait until their metadata shows every partition.

    Some brokers (Tansu) do not auto-create topics, and Bytewax's ``KafkaSource`` requires them to exist. A
    cluster that does not answer the first metadata request within ``timeout_s`` raises
    :class:`BrokerUnavailableError` (one line, exit code 3), not librdkafka's exception.
    """
    admin = AdminClient(dict(conf))
    wanted = sorted(set(topics))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as err:
        raise BrokerUnavailableError(
            f"Kafka at {conf.get('bootstrap.servers')} did not answer within {timeout_s:g} s: {_describe(err.args[0])}"
        ) from None
    missing = [t for t in wanted if t not in existing]
    if missing:
        futures = admin.create_topics([NewTopic(t, partitions, 1) for t in missing], operation_timeout=timeout_s)
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise HrmcondError(f"cannot create topic {topic!r}: {_describe(err.args[0])}") from err
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=timeout_s).topics
        if all(t in meta and meta[t].error is None and meta[t].partitions for t in wanted):
            return
        time.sleep(0.05)
    raise HrmcondError(f"topics {wanted} did not appear in the metadata within {timeout_s} s")


def delete_topics(conf: Mapping[str, str], topics: Iterable[str], timeout_s: float = 30.0) -> None:
    admin = AdminClient(dict(conf))
    for topic, fut in admin.delete_topics(sorted(set(topics)), operation_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise HrmcondError(f"cannot delete topic {topic!r}: {_describe(err.args[0])}") from err


class CheckedProducer:
    """An idempotent producer whose failed deliveries raise :class:`DeliveryError` instead of vanishing.

    ``produce`` is asynchronous; a failure reported by the delivery callback is raised on the next
    ``produce``/``poll``/``flush`` call, so the caller (a dataflow sink) fails loudly and, with recovery,
    replays from its last snapshot: at-least-once.
    """

    def __init__(self, conf: Mapping[str, str], flush_timeout_s: float = 30.0) -> None:
        settings = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            **client_callbacks(),
        }
        settings.update(conf)
        self._producer = Producer(settings)
        self._failure: DeliveryError | None = None
        self._flush_timeout_s = flush_timeout_s
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if self._failure is None:
                self._failure = DeliveryError(f"delivery to {msg.topic()}[{msg.partition()}] failed: {_describe(err)}")
        else:
            self.delivered += 1

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        self._raise_failure()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room (back-pressure, not loss).
                self._producer.poll(0.1)
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)
        self._raise_failure()

    def flush(self, watch: BrokerWatch | None = None) -> None:
        """Wait until every record is acknowledged. With ``watch``, a stall is reported while it lasts, and
        the wait ends (DeliveryError) when the watch gives up, rather than after ``flush_timeout_s``."""
        deadline = time.monotonic() + self._flush_timeout_s
        before = len(self._producer)
        while True:
            remaining = self._producer.flush(1.0 if watch is not None else self._flush_timeout_s)
            self._raise_failure()
            now = time.monotonic()
            if watch is not None and remaining < before:  # acknowledgements arrive: slow is not stalled
                watch.answered(now)
            before = remaining
            if not remaining:
                return
            if watch is None and now >= deadline:
                raise DeliveryError(f"{remaining} records still undelivered after {self._flush_timeout_s} s flush")
            if watch is not None and watch.silent(now, f"{remaining} records not acknowledged"):
                raise DeliveryError(f"{remaining} records not acknowledged for {now - watch.last_answer:.0f} s")
