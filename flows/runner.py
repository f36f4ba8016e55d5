"""Running a dataflow: one process in-thread, or a cluster of local processes (scale-out)."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main, init_db_dir
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig

from flows.broker import free_port
from flows.config import RecoveryConfig as RecoverySettings
from schemas.errors import HrmcondError

log = logging.getLogger(__name__)
#: How long worker processes get to stop after a stop signal before they are ended.
STOP_GRACE_S = 10.0


def recovery_config(settings: RecoverySettings, processes: int) -> RecoveryConfig | None:
    """Bytewax's recovery store, initialised on first use (one partition per worker process)."""
    if settings.dir is None:
        return None
    db = Path(settings.dir)
    if not any(db.glob("part-*.sqlite3")):
        db.mkdir(parents=True, exist_ok=True)
        init_db_dir(db, processes)
    return RecoveryConfig(str(db), backup_interval=timedelta(seconds=settings.backup_interval_s))


def run_process(
    flow: Dataflow,
    *,
    process_id: int = 0,
    addresses: list[str] | None = None,
    epoch_s: float = 1.0,
    recovery: RecoveryConfig | None = None,
) -> None:
    """Run this process's share of ``flow`` (all of it when ``addresses`` is None); blocks until done.

    The objects alive when the run starts (imports, the loaded model: about 220k tracked containers) live as
    long as it does, so they are frozen out of the garbage collector's sight for its duration: otherwise each
    full collection rescans them all, a pause of the whole worker (replay of 40 symbols x 1 day: three such
    collections of 230-310 ms under load, against 3-13 ms frozen), which a live context waits out."""
    gc.collect()  # what is garbage already goes now, not frozen for the run
    gc.freeze()
    try:
        cli_main(
            flow,
            workers_per_process=1,
            process_id=process_id if addresses else None,
            addresses=addresses,
            epoch_interval=timedelta(seconds=epoch_s),
            recovery_config=recovery,
        )
    finally:
        gc.unfreeze()


#: One entry of ``--addresses``: a host name, an IPv4 address or a bracketed IPv6 one, and a port.
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


def cluster_addresses(process_id: int | None, addresses: str | None, processes: int) -> list[str] | None:
    """The cluster this process belongs to, from ``--process-id i --addresses "h0:p0;h1:p1;..."`` (Bytewax's
    settings: one worker per process, process ``i`` listens on entry ``i``); None without them.

    Every process of a cluster is given the same list in the same order, so a mistake here (a missing index,
    one list longer than another) would leave the others waiting for a peer that never comes: refused at once.
    """
    if (process_id is None) != (addresses is None):
        raise HrmcondError("--process-id and --addresses go together: this process's index in the address list")
    if addresses is None or process_id is None:
        return None
    entries = [a.strip() for a in addresses.split(";")]
    for entry in entries:
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not 0 < int(match[1]) < 65536:
            raise HrmcondError(f"--addresses: {entry!r} is not host:port (entries are separated by ';')")
    if len(set(entries)) != len(entries):
        raise HrmcondError(f"--addresses: an address is listed twice: {addresses}")
    if not 0 <= process_id < len(entries):
        raise HrmcondError(f"--process-id {process_id} is not an index of the {len(entries)} --addresses (0 to N-1)")
    if processes > 1 and processes != len(entries):
        raise HrmcondError(
            f"--processes {processes} with {len(entries)} --addresses: across hosts, start one process per address "
            "with --process-id and --addresses only"
        )
    return entries


def supervise(children: list[subprocess.Popen], stop_at: list[float]) -> None:
    """Wait until every child has exited, one has failed, or (once a stop signal came, at ``stop_at[0]``)
    ``STOP_GRACE_S`` have passed; the children still running are then the caller's to end (:func:`end_all`)."""
    # Watch every child, not the first: a worker that failed leaves the others waiting for it in the cluster.
    while None in (codes := [child.poll() for child in children]) and not any(codes):
        if stop_at and time.monotonic() - stop_at[0] > STOP_GRACE_S:
            # Seen in a tailing 2-process run: the workers took the stop request and never left Bytewax's
            # loop. Ending them is a crash to recovery (it resumes from the last snapshot), and bounded.
            log.warning("worker processes still running %.0f s after the stop signal: ending them", STOP_GRACE_S)
            return
        time.sleep(0.1)


def end_all(children: list[subprocess.Popen]) -> None:
    """SIGTERM to every child still running, SIGKILL to those still running ``STOP_GRACE_S`` later.

    A worker whose peer died waits in Bytewax's cluster connection and never reaches the source that would act
    on SIGTERM: waiting for it without a bound hung the parent for ever (a worker that could not open its
    metrics port did this).
    """
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker process %d ignored SIGTERM for %.0f s: killing it", child.pid, STOP_GRACE_S)
            child.kill()
            child.wait()


def spawn_cluster(argv: list[str], processes: int) -> None:
    """Re-run this command as ``processes`` local worker processes (``--process-id i --addresses ...``).

    Worker threads in one process share the GIL, so scale-out uses processes (one worker each). Any child
    failing fails the whole run, and the others are stopped.
    """
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *argv, "--process-id", str(i), "--addresses", addresses],
            env=os.environ.copy(),
        )
        for i in range(processes)
    ]

    stop_at: list[float] = []  # when a stop signal came

    def forward(signum: int, frame) -> None:  # an orchestrator stops the parent: every worker stops the same way
        stop_at.append(time.monotonic())
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        supervise(children, stop_at)
    finally:
        end_all(children)
    codes = [child.returncode for child in children]
    if stop_at:
        return  # stopped on request: a worker ended by its signal or by the grace period is not a failure
    if any(codes):
        raise HrmcondError(f"a worker process failed (exit codes {codes}); see its log above")
