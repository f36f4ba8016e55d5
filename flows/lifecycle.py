"""How a live run stops: on request (SIGTERM/SIGINT), when the broker is gone, or when output cannot be delivered.

A Python exception raised inside a Bytewax callback unwinds through its Rust runtime as a panic: it prints a
Rust backtrace, and a second panic in a destructor aborts the process (exit 134). So nothing here raises
through Bytewax. A stop request is a flag the Kafka source reads at its next poll; it then raises Bytewax's
``AbortExecution``, which ends the run without end-of-input processing (no open bar is closed early), like a
crash without the mess: with ``--recovery-dir`` the run resumes from its last snapshot. A run that cannot
deliver its output any more ends the process at once (:func:`fatal`), before Bytewax could snapshot past the
undelivered records: at-least-once holds, and the exit code says why.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from schemas.errors import HrmcondError

log = logging.getLogger(__name__)

#: Exit code of a run ended because Kafka stopped answering or refused the output (2 is a user error).
EXIT_UNAVAILABLE = 3


class BrokerUnavailableError(HrmcondError):
    """Kafka did not answer for longer than ``kafka.unavailable_after_s``."""

    exit_code = EXIT_UNAVAILABLE


@dataclass
class StopRequest:
    """Process-wide: whether the run should stop, and the error that made it (None: a requested stop)."""

    requested: threading.Event = field(default_factory=threading.Event)
    error: HrmcondError | None = None

    def request(self, error: HrmcondError | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.requested.set()

    def reset(self) -> None:
        self.requested.clear()
        self.error = None


STOP = StopRequest()


def fatal(message: str) -> None:
    """End the process now with :data:`EXIT_UNAVAILABLE`: one clear line, no traceback (see module doc)."""
    log.critical("%s", message)
    print(f"hrmcond run: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(EXIT_UNAVAILABLE)


@dataclass
class BrokerWatch:
    """Tells a broker that is slow to answer from one that is gone, for one client.

    ``silent`` is called whenever the broker failed to answer in time; after ``warn_after_s`` without any
    answer it logs one warning (a frozen broker is said within seconds), after ``give_up_after_s`` it returns
    True: the caller ends the run. ``answered`` resets it, and says so if a warning was out.
    """

    what: str
    warn_after_s: float
    give_up_after_s: float
    last_answer: float = field(default_factory=time.monotonic)
    warned: bool = False

    def answered(self, now: float) -> None:
        if self.warned:
            log.info("%s: Kafka answers again after %.1f s", self.what, now - self.last_answer)
            self.warned = False
        self.last_answer = now

    def silent(self, now: float, why: str) -> bool:
        quiet_s = now - self.last_answer
        if quiet_s >= self.warn_after_s and not self.warned:
            log.warning(
                "%s: no answer from Kafka for %.1f s (%s); holding the event-time clock, nothing is "
                "closed or dead-lettered meanwhile",
                self.what,
                quiet_s,
                why,
            )
            self.warned = True
        return quiet_s >= self.give_up_after_s
