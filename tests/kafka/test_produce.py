"""``hrmcond produce`` against the session's broker: pacing at ``--speed`` x real time, and a run configured with
secrets logs none of them (issue 9)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow.compute as pc
import pytest
from confluent_kafka import Consumer, TopicPartition

from conditioning.sim.market import MarketConfig, simulate_market
from flows.cli import main
from flows.config import load_config
from schemas.canonical import write_ticks
from schemas.ticks import decode_tick

pytestmark = pytest.mark.kafka

SPEED = 40.0
SPAN_S = 120.0  # event time replayed: 3 s of wall time at SPEED


@pytest.fixture(scope="module")
def ticks_file(tmp_path_factory):
    """The first ``SPAN_S`` of a simulated session: a few hundred ticks, a delivery report between most of them."""
    ticks = simulate_market(MarketConfig(n_symbols=5, seed=3, scenarios=False)).ticks
    t0 = ticks["ts_ns"][0].as_py()
    path = tmp_path_factory.mktemp("produce") / "ticks.parquet"
    write_ticks(ticks.filter(pc.less(ticks["ts_ns"], t0 + int(SPAN_S * 1e9))), path)
    return path


def read_back(conf: dict[str, str], topic: str, expected: int, timeout_s: float = 30.0):
    consumer = Consumer({**conf, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is None:
            out.append(msg)
    consumer.close()
    return out


def test_speed_paces_event_time(kafka_cluster, kafka_topics, ticks_file, capsys):
    topic = kafka_topics("ticks")["ticks"]
    started = time.monotonic()
    main(
        [
            "produce",
            "--format",
            "canonical",
            "--ticks",
            str(ticks_file),
            "--bootstrap",
            kafka_cluster.bootstrap_servers,
            "--topic",
            topic,
            "--speed",
            str(SPEED),
        ]
    )
    wall_s = time.monotonic() - started
    n = int(capsys.readouterr().out.split()[1])  # "produced N messages"
    got = read_back(kafka_cluster.client_config, topic, n)
    assert len(got) == n > 100
    event_ns = np.array([decode_tick(m.value()).ts_ns for m in got])  # [N]
    sent_ms = np.array([m.timestamp()[1] for m in got])  # [N] producer create time, ms
    order = np.argsort(event_ns, kind="stable")
    event_s, sent_s = (event_ns[order] - event_ns.min()) / 1e9, (sent_ms[order] - sent_ms.min()) / 1e3
    # The table spans enough event time for pacing to show: as fast as possible it takes well under a second.
    assert event_s[-1] / SPEED > 2.5
    rate = event_s[-1] / sent_s[-1]
    assert SPEED * 0.9 <= rate <= SPEED * 1.1, rate
    # Paced throughout, not in bursts: each message leaves when its event time, scaled, says (within 10%
    # of the span), and the whole command takes that long too.
    assert np.abs(sent_s - event_s / SPEED).max() < 0.1 * event_s[-1] / SPEED
    assert event_s[-1] / SPEED * 0.9 <= wall_s <= event_s[-1] / SPEED * 1.1 + 2.0, wall_s


SECRET_ENV, SECRET_FILE = "p#ss: [Zq9!SeCrEt #env", "p#ss: [Zq9!SeCrEt #file'"
MARK = "SeCrEt"


def test_runs_with_secrets_log_none(kafka_cluster, kafka_topics, ticks_file, tmp_path):
    """Successful runs, debug logging on, with one secret from the environment and one from the file:
    ``produce`` (text and JSON logs), then ``run`` over what it produced."""
    topics = kafka_topics("ticks", "contexts", "features", "dead_letter")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: {kafka_cluster.bootstrap_servers}\n  topics: {topics}\n"
        f"  librdkafka:\n    ssl.key.password: '{SECRET_FILE.replace(chr(39), chr(39) * 2)}'\n"
    )
    env = {**os.environ, "HRMCOND__KAFKA__LIBRDKAFKA__SASL.PASSWORD": SECRET_ENV}
    # The runs get both secrets intact (this is the configuration the commands load).
    conf = load_config(config, env=env).kafka.client_config()
    assert (conf["sasl.password"], conf["ssl.key.password"]) == (SECRET_ENV, SECRET_FILE)

    def hrmcond(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "-v", *argv], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert MARK not in done.stdout + done.stderr
        return done.stdout + done.stderr

    produce = ["produce", "--config", str(config), "--format", "canonical", "--ticks", str(ticks_file)]
    assert "produced" in hrmcond(*produce)
    assert "produced" in hrmcond("--log-format", "json", *produce)
    assert "consuming" in hrmcond("run", "--config", str(config), "--until-eof")
    assert read_back(kafka_cluster.client_config, topics["contexts"], 1)  # the run did condition bars
