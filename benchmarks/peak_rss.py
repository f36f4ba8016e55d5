"""Peak resident memory of one ``hrmcond`` command, read inside the process that ran it.

Not ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the parent: Linux carries a process's high-water mark across
``exec``, so a command started from a large parent (a benchmark that holds the simulated market) reports the
parent's size where that is larger (a features-only replay read ~685 MiB that way, ~460 MiB on its own).
``VmHWM`` in ``/proc/self/status`` belongs to the address space the command itself built, from ``exec`` on.
"""

from __future__ import annotations

import sys

_RUN_THEN_REPORT = """\
import sys
from flows.cli import main
try:
    main(sys.argv[1:])
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("peak_rss_kib", hwm.split()[1], file=sys.stderr)
"""


def command(*args: str) -> list[str]:
    """``hrmcond <args>`` in a fresh Python that writes its peak RSS to stderr as it ends (:func:`peak_rss_mib`).
    With ``--processes N`` that is the parent's only, not its workers'."""
    return [sys.executable, "-c", _RUN_THEN_REPORT, *args]


def peak_rss_mib(stderr: str) -> float:
    """The peak RSS (MiB) that a :func:`command` reported on its stderr."""
    kib = [line.split()[1] for line in stderr.splitlines() if line.startswith("peak_rss_kib ")]
    if not kib:
        raise ValueError("the command reported no peak RSS (did it run through benchmarks/peak_rss.command?)")
    return int(kib[-1]) / 1024
