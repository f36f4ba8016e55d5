"""``make demo``: the whole live path on a laptop, with nothing from outside the repository.

An embedded Kafka-protocol broker starts; the project's market simulator produces a multi-symbol trading
day (volatility regimes, an SSR trigger, a LULD limit state that becomes a trading pause) into the ticks
topic, plus a few malformed messages; the live dataflow consumes it until the end of the topic with the
shipped default model; the contexts and dead letters are read back from Kafka and summarised.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from conditioning.sim.market import simulate_day
from flows.broker import EmbeddedBroker
from flows.config import AppConfig, load_config
from flows.kafka import CheckedProducer
from flows.live import build_live_flow
from flows.producer import produce_table
from flows.runner import run_process
from flows.summary import summarise
from schemas.records import ContextRecord, DeadLetter

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "local.yaml"
#: Malformed inputs the demo adds to show that they are dead-lettered, not lost.
BAD_MESSAGES = [
    (b"SIM00002", b"{not json"),
    (b"SIM00002", b'{"kind":"trade","symbol":"SIM00002","ts_ns":1709562600000000000,"price":-1,"size":5}'),
    (b"SIM00002", b'{"kind":"order","symbol":"SIM00002","ts_ns":1709562600000000000}'),
]


def read_topic(conf: dict[str, str], topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every message now in ``topic`` (reads until the partitions' ends)."""
    consumer = Consumer(
        {**conf, "group.id": f"demo-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False, "enable.partition.eof": True}
    )
    parts = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[bytes] = []
    done: set[int | None] = set()  # partitions at their end
    deadline = time.monotonic() + timeout_s
    while len(done) < len(parts) and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            done.add(msg.partition())
            continue
        value = msg.value()
        assert value is not None  # the demo's topics hold no tombstones
        out.append(value)
    consumer.close()
    return out


def demo_config(path: Path | None, bootstrap: str) -> AppConfig:
    cfg = load_config(path or DEMO_CONFIG)
    suffix = uuid.uuid4().hex[:6]
    topics = cfg.kafka.topics.model_copy(
        update={
            name: f"demo-{suffix}-{getattr(cfg.kafka.topics, name)}"
            for name in ("ticks", "contexts", "features", "dead_letter")
            if getattr(cfg.kafka.topics, name)
        }
    )
    return cfg.model_copy(
        update={"kafka": cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap, "topics": topics})}
    )


def produce_bad_messages(conf: dict[str, str], topic: str) -> None:
    # Its own scope: a producer outliving the broker logs a refused reconnect on the way out.
    producer = CheckedProducer(conf)
    for key, value in BAD_MESSAGES:
        producer.produce(topic, value, key=key)
    producer.flush()


def run_demo(symbols: int = 12, seed: int = 7, config: Path | None = None) -> str:
    print(f"simulating one trading day of {symbols} symbols (seed {seed})...", flush=True)
    market = simulate_day(symbols, seed)
    with EmbeddedBroker() as broker:
        cfg = demo_config(config, broker.bootstrap_servers)
        conf = cfg.kafka.client_config()
        print(
            f"embedded broker at {broker.bootstrap_servers}; producing {market.ticks.num_rows:,} ticks...", flush=True
        )
        produce_table(
            conf, cfg.kafka.topics.ticks, market.ticks, market.reference, partitions=cfg.kafka.topics.partitions
        )
        produce_bad_messages(conf, cfg.kafka.topics.ticks)
        print("running the live pipeline until the end of the topic...", flush=True)
        t0 = time.perf_counter()
        run_process(build_live_flow(cfg, until_eof=True))
        wall = time.perf_counter() - t0
        contexts = [ContextRecord.model_validate_json(v) for v in read_topic(conf, cfg.kafka.topics.contexts)]
        dead = [DeadLetter.model_validate_json(v) for v in read_topic(conf, cfg.kafka.topics.dead_letter)]
    n_in = market.ticks.num_rows + len(market.reference) + len(BAD_MESSAGES)
    report = summarise(
        "HRM conditioning demo: one simulated trading day through the live pipeline", n_in, wall, contexts, dead
    )
    print(report)
    return report
