"""Circuit breaker for pattern retrieval (live): stop waiting on an index that keeps timing out.

Each live batch gives retrieval one deadline (``conditioning.rag.timeout_ms``). While the index is stuck (a
runaway query, a starved core) every batch would wait that deadline out and then fail open anyway. After
``trip_after`` batches in a row whose retrieval timed out or failed, the breaker opens: batches skip retrieval
for ``cooldown_ms`` (their contexts are the regime part alone, status ``unavailable``, with no wait); then one
batch probes the index, and an answer closes the breaker while another failure opens it for a new cooldown.
Replay never uses it: there retrieval waits for its answer, so its output cannot depend on machine load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flows.metrics import METRICS

log = logging.getLogger(__name__)


@dataclass
class RetrievalBreaker:
    trip_after: int  # failed batches in a row that open the breaker; 0 = never open
    cooldown_ns: int  # how long it stays open before a batch probes again
    failures: int = 0  # failed batches in a row so far
    open_until_ns: int = 0  # monotonic clock; retrieval is skipped before it

    def allows(self, now_ns: int) -> bool:
        """Whether a batch starting at ``now_ns`` (``time.monotonic_ns``) should query the index."""
        return now_ns >= self.open_until_ns

    @property
    def tripped(self) -> bool:
        """Enough failures in a row that the breaker is open or probing."""
        return bool(self.trip_after) and self.failures >= self.trip_after

    def record(self, failed: bool, now_ns: int) -> None:
        """The outcome of a batch that queried the index: ``failed`` = timed out or errored."""
        if not failed:
            if self.tripped:
                log.info("pattern retrieval answers again: circuit closed")
                METRICS.rag_breaker_open.set(0)
            self.failures = 0
            return
        self.failures += 1
        if self.tripped:
            if self.failures == self.trip_after:
                log.warning(
                    "pattern retrieval failed %d batches in a row: skipping it for %.0f ms at a time "
                    "(contexts carry the regime part, rag_status 'unavailable')",
                    self.failures,
                    self.cooldown_ns / 1e6,
                )
                METRICS.rag_breaker_open.set(1)
            self.open_until_ns = now_ns + self.cooldown_ns
