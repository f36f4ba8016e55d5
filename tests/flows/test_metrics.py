"""The metrics endpoint listens on ``metrics.host``, loopback by default (issue 9: it listened on 0.0.0.0), and
serves whether the exchange's session is open by the configured calendar."""

from __future__ import annotations

import datetime as dt
import re
import socket
import time
import urllib.request

import pytest

from flows.broker import free_port
from flows.config import MetricsConfig, load_config
from flows.metrics import serve, session_open
from schemas.errors import HrmcondError
from schemas.session import XNYS, CalendarOverrides, regular_session, session_calendar


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


def _utc_ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1e9)


@pytest.mark.parametrize(
    ("utc", "is_open"),
    [
        ("2024-11-29 17:59", True),  # the day after Thanksgiving closes at 13:00 New York (18:00 UTC)
        ("2024-11-29 18:01", False),
        ("2024-07-04 16:00", False),  # Independence Day, a Thursday
        ("2024-03-08 14:29", False),  # EST: opens 14:30 UTC
        ("2024-03-11 13:31", True),  # EDT from 2024-03-10: opens 13:30 UTC
        ("2024-03-11 20:01", False),
    ],
)
def test_session_open_follows_the_exchange_calendar(utc, is_open):
    """``hrmcond_session_open`` (read by the no-contexts alert) against NYSE's published hours."""
    assert session_open(XNYS, clock=lambda: _utc_ns(utc))() == float(is_open)


def test_session_open_applies_the_configured_overrides():
    closed = session_calendar(CalendarOverrides(closed=(dt.date(2024, 6, 3),)))
    assert session_open(XNYS, clock=lambda: _utc_ns("2024-06-03 16:00"))() == 1.0
    assert session_open(closed, clock=lambda: _utc_ns("2024-06-03 16:00"))() == 0.0


def test_endpoint_serves_session_open_for_now(server):
    srv = server(MetricsConfig(port=free_port()))
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/metrics", timeout=5) as resp:
        served = re.search(rb"^hrmcond_session_open (\S+)$", resp.read(), re.MULTILINE)
    assert served is not None
    assert float(served.group(1)) == float(regular_session(time.time_ns()))
