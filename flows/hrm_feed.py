"""The HRM side of the contexts topic: the latest context per symbol, deduplicated, as a batch tensor.

The pipeline delivers at least once, keyed by symbol, with ``(symbol, window_end_ns)`` as the idempotency key.
This consumer keeps, per symbol, the record with the newest ``window_end_ns`` (a redelivered or older record
changes nothing) and hands the HRM a ``[B, 256]`` context batch for the symbols of its batch. A symbol with no
context yet, or one older than ``max_age_ns``, gets zeros: the neutral context, for which FiLM is exactly the
identity, so a missing context degrades to the unconditioned model instead of stale conditioning.

    feed = ContextFeed(conf, "contexts", max_age_ns=5 * 60 * 10**9)
    feed.poll()                                   # between HRM steps
    context = feed.batch(["AAPL", "MSFT"])        # [2, 256]
    tokens = film_layer(l_tokens, context)        # [2, T, 512]
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence

import torch
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from schemas.records import CONTEXT_DIM, ContextRecord

log = logging.getLogger(__name__)


class ContextFeed:
    def __init__(
        self, conf: Mapping[str, str], topic: str, *, max_age_ns: int | None = None, group_id: str | None = None
    ) -> None:
        # Every HRM process needs every symbol's context, so it reads all partitions itself (assign, no group
        # rebalancing) from the start of the retained topic; the newest window per symbol wins anyway.
        self._consumer = Consumer(
            {**conf, "group.id": group_id or f"hrm-feed-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.max_age_ns = max_age_ns
        self.latest: dict[str, ContextRecord] = {}
        self.invalid = 0

    def poll(self, timeout_s: float = 0.0, max_messages: int = 10_000) -> int:
        """Apply what has arrived (waiting up to ``timeout_s`` for the first message); returns how many
        records advanced a symbol's context."""
        advanced = 0
        for msg in self._consumer.consume(max_messages, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.error("contexts consumer error: %s", err)
                continue
            try:
                rec = ContextRecord.model_validate_json(msg.value() or b"")  # a tombstone is unreadable too
            except ValueError as err:  # a record this version cannot read: count it, keep going
                self.invalid += 1
                log.warning(
                    "unreadable context record at %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), err
                )
                continue
            current = self.latest.get(rec.symbol)
            if current is None or rec.window_end_ns > current.window_end_ns:
                self.latest[rec.symbol] = rec
                advanced += 1
        return advanced

    def batch(self, symbols: Sequence[str], now_ns: int | None = None) -> torch.Tensor:
        """``[len(symbols), 256]`` float32: each symbol's latest context, zeros where none or too old."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        out = torch.zeros(len(symbols), CONTEXT_DIM)
        for i, symbol in enumerate(symbols):
            rec = self.latest.get(symbol)
            if rec is None or (self.max_age_ns is not None and now_ns - rec.window_end_ns > self.max_age_ns):
                continue
            out[i] = torch.tensor(rec.context)
        return out

    def close(self) -> None:
        self._consumer.close()
