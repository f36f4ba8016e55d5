"""The metrics endpoint listens on ``metrics.host``, loopback by default (issue 9: it listened on 0.0.0.0)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from flows.broker import free_port
from flows.config import MetricsConfig, load_config
from flows.metrics import serve
from schemas.errors import HrmcondError


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted. Linux routes all of 127/8 to the loopback
    interface, so 127.0.0.2 reaches a socket bound to 0.0.0.0 but not one bound to 127.0.0.1."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


@pytest.fixture
def server():
    started = []

    def start(cfg: MetricsConfig):
        started.append(serve(cfg))
        return started[-1]

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def test_default_listens_on_loopback_only(server):
    cfg = load_config(None, env={"HRMCOND__METRICS__PORT": str(free_port())}).metrics
    assert cfg.host == "127.0.0.1"
    srv = server(cfg)
    assert srv.server_address == ("127.0.0.1", cfg.port)
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.port}/metrics", timeout=5) as resp:
        assert b"hrmcond_ticks_total" in resp.read()  # it serves our metrics
    assert not reachable("127.0.0.2", cfg.port)


def test_host_is_configurable(server):
    # The probe tells the two apart: bound to every interface, 127.0.0.2 does connect.
    wildcard = server(MetricsConfig(port=free_port(), host="0.0.0.0"))
    assert wildcard.server_address[0] == "0.0.0.0" and reachable("127.0.0.2", wildcard.server_address[1])
    port = free_port()
    cfg = load_config(None, env={"HRMCOND__METRICS__PORT": str(port), "HRMCOND__METRICS__HOST": "127.0.0.2"})
    srv = server(cfg.metrics)
    assert srv.server_address == ("127.0.0.2", port)
    assert reachable("127.0.0.2", port) and not reachable("127.0.0.1", port)


def test_no_port_no_endpoint_and_bind_errors_are_one_line():
    assert serve(MetricsConfig()) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HrmcondError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(MetricsConfig(port=port))
