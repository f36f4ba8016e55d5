"""The live graph: Kafka ticks topic in, contexts / features / dead-letter topics out."""

from __future__ import annotations

from bytewax.connectors.kafka import OFFSET_BEGINNING, KafkaSource
from bytewax.dataflow import Dataflow

from flows.config import AppConfig
from flows.contexts import ContextEngine, load_engine
from flows.dataflow import Sinks, build_flow
from flows.kafka import ensure_topics
from flows.sinks import KafkaRecordSink


def build_live_flow(cfg: AppConfig, *, until_eof: bool, engine: ContextEngine | None = None) -> Dataflow:
    """``until_eof``: stop once the ticks present at start are consumed (backfills, tests, the demo).

    Without recovery the source starts at the beginning of the topic; with recovery Bytewax resumes from
    the offsets stored with the last snapshot.
    """
    conf = cfg.kafka.client_config()
    topics = cfg.kafka.topics
    ensure_topics(conf, cfg.kafka.topic_names(), topics.partitions)
    source = KafkaSource(
        [cfg.kafka.bootstrap_servers],
        [topics.ticks],
        tail=not until_eof,
        starting_offset=OFFSET_BEGINNING,
        add_config={k: v for k, v in conf.items() if k != "bootstrap.servers"},
        raise_on_errors=False,  # consumer errors become dead letters + logs + a metric (flows/dataflow.py)
    )
    sinks = Sinks(
        contexts=KafkaRecordSink(conf, topics.contexts),
        features=KafkaRecordSink(conf, topics.features) if topics.features else None,
        dead_letters=KafkaRecordSink(conf, topics.dead_letter),
    )
    return build_flow(cfg, source, sinks, lambda: engine or load_engine(cfg, deterministic=False),
                      kafka_input=True, wall_clock=True)
