"""Output adapters: Kafka (delivery-checked) and JSON Lines files (deterministic order)."""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.config import KafkaConfig
from flows.kafka import CheckedProducer
from flows.lifecycle import BrokerWatch, fatal
from schemas.errors import DeliveryError

#: What the sinks write: (key, JSON bytes, sort key). The sort key orders file output, e.g.
#: ``f"{window_end_ns:020d} {symbol}"``: fixed width, so string order is time order.
Keyed = tuple[str, bytes, str]


class _KafkaPartition(StatelessSinkPartition):
    def __init__(self, kafka: KafkaConfig, topic: str):
        self.topic = topic
        self.producer = CheckedProducer(kafka.client_config())
        self.watch = BrokerWatch(f"producing to {topic}", kafka.stall_warning_s, kafka.unavailable_after_s)

    def write_batch(self, items: list[Keyed]) -> None:
        try:
            for key, value, _ in items:
                self.producer.produce(self.topic, value, key=key)
            # Flushing per batch ties delivery to Bytewax's progress: an epoch is only snapshotted after its
            # outputs are acknowledged, so a crash replays (duplicates), never skips: at-least-once.
            self.producer.flush(self.watch)
        except DeliveryError as err:
            # Raising would unwind through Bytewax (lifecycle.py); ending here snapshots nothing past the
            # undelivered records, so a restart with the same recovery store delivers them.
            fatal(f"Kafka did not take the output to {self.topic!r}: {err}")

    def close(self) -> None:
        self.write_batch([])


class KafkaRecordSink(DynamicSink):
    """Produces each record keyed by symbol; a record Kafka does not acknowledge ends the run (exit code 3),
    where Bytewax's KafkaSink would drop it."""

    def __init__(self, kafka: KafkaConfig, topic: str):
        self.kafka = kafka
        self.topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        return _KafkaPartition(self.kafka, self.topic)


class _JsonlPartition(StatelessSinkPartition):
    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115

    def write_batch(self, items: list[Keyed]) -> None:
        for _, value, sort_key in items:
            self.file.write(sort_key.encode() + b"\t" + value + b"\n")

    def close(self) -> None:
        self.file.close()


class JsonlPartSink(DynamicSink):
    """Each worker writes ``<path>.part-<worker>`` with a sort key per line; :func:`merge_parts` orders them."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        return _JsonlPartition(part_path(self.path, worker_index))


def part_path(path: Path, worker_index: int | str) -> Path:
    """A worker's part of ``path`` (``"*"`` gives the glob of all parts)."""
    return path.with_name(f".{path.name}.part-{worker_index}")


def merge_parts(path: Path) -> int:
    """Merge the workers' part files into ``path``, ordered by sort key; returns the number of records.

    Each part is sorted in memory by (sort key, line) and the parts are k-way merged, so the result is
    byte-identical whatever the number of workers and however records were spread among them.
    """
    parts = sorted(path.parent.glob(part_path(path, "*").name))

    def lines(part: Path) -> Iterable[tuple[str, bytes]]:
        rows = []
        with open(part, "rb") as f:
            for line in f:
                key, _, value = line.rstrip(b"\n").partition(b"\t")
                rows.append((key.decode(), value))
        rows.sort()
        return rows

    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        for _, value in heapq.merge(*(lines(p) for p in parts)):
            out.write(value + b"\n")
            n += 1
    os.replace(tmp, path)
    for p in parts:
        p.unlink()
    return n
