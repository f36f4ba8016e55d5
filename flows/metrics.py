"""Prometheus metrics of the pipeline (exposed on ``metrics.host:metrics.port`` when a port is set; read by the
demo summary)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from flows.config import MetricsConfig
from schemas.errors import HrmcondError
from schemas.session import XNYS, SessionCalendar, regular_session

_LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 80, 100, 250, 1000)


@dataclass(frozen=True)
class _Metrics:
    ticks: Counter
    dead_letters: Counter
    late_ticks: Counter
    ticks_outside_session: Counter
    crossed_quotes: Counter
    contexts: Counter
    rag_status: Counter
    rag_breaker_open: Gauge
    context_latency_ms: Histogram
    consumer_errors: Counter
    consumer_lag: Gauge
    session_open: Gauge


METRICS = _Metrics(
    ticks=Counter("hrmcond_ticks", "Ticks accepted, by kind", ["kind"]),
    dead_letters=Counter("hrmcond_dead_letters", "Inputs dead-lettered, by reason", ["reason"]),
    late_ticks=Counter("hrmcond_late_ticks", "Ticks beyond the allowed lateness"),
    ticks_outside_session=Counter("hrmcond_ticks_outside_session", "Ticks outside the regular session, skipped"),
    crossed_quotes=Counter("hrmcond_crossed_quotes", "Crossed quotes seen (excluded from spread features)"),
    contexts=Counter("hrmcond_contexts", "Context records emitted, by regime", ["regime"]),
    rag_status=Counter(
        "hrmcond_rag_status", "RAG outcome per context (timeout, error, unavailable = fail-open)", ["status"]
    ),
    rag_breaker_open=Gauge("hrmcond_rag_breaker_open", "1 while retrieval is skipped after repeated timeouts"),
    context_latency_ms=Histogram(
        "hrmcond_context_latency_ms",
        "Model time per context batch (features to context), ms",
        buckets=_LATENCY_BUCKETS_MS,
    ),
    consumer_errors=Counter("hrmcond_consumer_errors", "librdkafka consumer errors, by code", ["code"]),
    consumer_lag=Gauge("hrmcond_consumer_lag", "Messages of the ticks partition not yet read", ["partition"]),
    session_open=Gauge(
        "hrmcond_session_open",
        "1 while the exchange's regular session is open by this host's clock (the configured calendar)",
    ),
)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a metric sample (0 when never touched), e.g. ``sample("hrmcond_late_ticks_total")``."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def total(counter: Counter) -> float:
    """A counter's count in this process, summed over its labels."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def session_open(calendar: SessionCalendar, clock: Callable[[], int] = time.time_ns) -> Callable[[], float]:
    """The value of ``hrmcond_session_open`` at each scrape: 1.0 inside the regular session of ``calendar``
    (holidays, early closes and the configured overrides included) at ``clock()`` (ns since the epoch), else
    0.0. The no-contexts alert reads it, so that it follows the exchange's calendar rather than a UTC window."""
    return lambda: float(regular_session(clock(), calendar))


def serve(cfg: MetricsConfig, calendar: SessionCalendar = XNYS) -> WSGIServer | None:
    """Start the exposition endpoint on ``cfg.host:cfg.port`` in a daemon thread (None when no port is set);
    ``calendar`` is the pipeline's session calendar, for ``hrmcond_session_open``."""
    if cfg.port is None:
        return None
    METRICS.session_open.set_function(session_open(calendar))
    try:
        server, _ = start_http_server(cfg.port, addr=cfg.host)
    except OSError as err:  # port taken, address not on this host, unknown name
        raise HrmcondError(f"metrics endpoint: cannot listen on {cfg.host}:{cfg.port}: {err.strerror or err}") from err
    return server
