"""The parent of ``--processes N`` ends every worker when one fails, even a worker that does not act on SIGTERM
(one whose peer died waits in Bytewax's cluster connection): it used to wait for it for ever."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from flows import runner

STUBBORN = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).touch()
time.sleep(600)
"""
FAILS_ONCE_PEER_IS_UP = """
import pathlib, sys, time
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.01)
sys.exit(2)
"""


def test_a_failed_worker_ends_a_peer_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "STOP_GRACE_S", 1.0)
    ready = tmp_path / "stubborn-ignores-sigterm"
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN, str(ready)])
    failing = subprocess.Popen([sys.executable, "-c", FAILS_ONCE_PEER_IS_UP, str(ready)])
    children = [stubborn, failing]
    start = time.monotonic()
    try:
        runner.supervise(children, stop_at=[])
        assert failing.returncode == 2 and stubborn.poll() is None  # the condition: one failed, one still up
        runner.end_all(children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert stubborn.returncode == -signal.SIGKILL  # SIGTERM was ignored: only the kill ended it
    assert time.monotonic() - start < 30


def test_a_stop_signal_ends_the_wait_after_the_grace_period(monkeypatch):
    monkeypatch.setattr(runner, "STOP_GRACE_S", 0.5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = time.monotonic()
        runner.supervise([child], stop_at=[start])
        waited = time.monotonic() - start
        assert child.poll() is None and 0.5 <= waited < 5
        runner.end_all([child])
        assert child.returncode == -signal.SIGTERM  # it acted on SIGTERM: no kill needed
    finally:
        if child.poll() is None:
            child.kill()
