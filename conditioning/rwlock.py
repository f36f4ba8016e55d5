"""A readers-writer lock with timeouts: the guard of the pattern library's hnswlib index (conditioning/library.py).

hnswlib is not safe under concurrent ``add_items`` and ``knn_query``: queries share the lock, updates hold it
exclusively.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """Readers-writer lock with timeouts. Writers are preferred over readers that arrive while a writer waits
    (a stream of queries cannot starve an update); a releasing writer first admits the readers that were
    already waiting (a chunked update cannot starve queries)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._pass = 0  # readers admitted ahead of waiting writers: those waiting when the last writer left

    def acquire_read(self, timeout: float | None = None) -> bool:
        with self._cond:
            self._readers_waiting += 1
            try:
                ok = self._cond.wait_for(
                    lambda: not self._writer and (not self._writers_waiting or self._pass > 0), timeout
                )
            finally:
                self._readers_waiting -= 1
            if ok:
                self._readers += 1
                self._pass = max(0, self._pass - 1)
            elif self._pass > self._readers_waiting:  # a reader given a pass left: do not hold writers for it
                self._pass = self._readers_waiting
                self._cond.notify_all()
            return ok

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers and not self._pass)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._pass = self._readers_waiting
                self._cond.notify_all()

    @property
    def reading(self) -> bool:
        """A reader holds the lock."""
        with self._cond:
            return self._readers > 0

    @property
    def idle(self) -> bool:
        """No reader or writer holds the lock (for tests and health checks)."""
        with self._cond:
            return not self._readers and not self._writer
