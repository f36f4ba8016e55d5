"""The live graph: Kafka ticks topic in, contexts / features / dead-letter topics out."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.config import AppConfig
from flows.contexts import ContextEngine, load_engine
from flows.dataflow import Sinks, build_flow
from flows.kafka import ensure_topics
from flows.sinks import KafkaRecordSink
from flows.sources.kafka import StopWatch, TickSource


def build_live_flow(cfg: AppConfig, *, until_eof: bool, engine: ContextEngine | None = None) -> Dataflow:
    """``until_eof``: stop once the ticks present at start are consumed (backfills, tests, the demo).

    Without recovery the source starts at the beginning of the topic; with recovery Bytewax resumes from
    the offsets (and event-time clocks) stored with the last snapshot.
    """
    k = cfg.kafka
    # A broker that is not there at start is said in one line with exit code 3 within the configured bound,
    # as one that goes away later is (flows/lifecycle.py).
    ensure_topics(k.client_config(), k.topic_names(), k.topics.partitions, timeout_s=k.unavailable_after_s)
    sinks = Sinks(
        contexts=KafkaRecordSink(k, k.topics.contexts),
        features=KafkaRecordSink(k, k.topics.features) if k.topics.features else None,
        dead_letters=KafkaRecordSink(k, k.topics.dead_letter),
    )
    flow = build_flow(
        cfg, TickSource(cfg, until_eof=until_eof), sinks, lambda: engine or load_engine(cfg, deterministic=False)
    )
    if not until_eof:  # a tailing run ends only on a stop request, which every worker must see (StopWatch)
        op.input("stop_watch", flow, StopWatch())
    return flow
