"""Stand-ins for what the live source reads through confluent-kafka (its ``Message`` cannot be built from
Python, and a ``Consumer`` needs a broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException


class FakeMessage:
    """A consumed message at ``offset``; ``eof``: librdkafka's partition-EOF event instead."""

    def __init__(self, offset: int, value: bytes | None, key: bytes | None = b"AAA", partition: int = 0, eof=False):
        self._offset, self._value, self._key, self._partition, self._eof = offset, value, key, partition, eof

    def error(self):
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def offset(self):
        return self._offset

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return "ticks"

    def partition(self):
        return self._partition


class FakeConsumer:
    """Serves queued batches; answers watermark queries with ``high`` unless ``frozen``."""

    def __init__(self, conf):
        self.batches: list[list[FakeMessage]] = []
        self.high = 0
        self.frozen = False
        self.queries = 0  # watermark queries sent to the broker (not answered from the last fetch)

    def assign(self, parts):
        pass

    def consume(self, n, timeout):
        return self.batches.pop(0) if self.batches else []

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        self.queries += not cached
        if self.frozen and not cached:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return 0, self.high

    def close(self):
        pass
