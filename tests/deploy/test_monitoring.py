"""The Prometheus side of deploy/: the alert rules under promtool, and a real Prometheus server scraping a live
run's metrics endpoint (Debian's `prometheus` package; `make test` installs it: tests/install_debian.sh)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from flows.metrics import METRICS

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"


def _is_root() -> bool:
    return os.geteuid() == 0


def _binary(name: str) -> str:
    """Path of a binary of the package; skips only where the set-up could not have installed it (not root)."""
    path = shutil.which(name)
    if path is None:
        if not _is_root():
            pytest.skip(f"{name} not installed, and installing Debian's prometheus package needs root")
        pytest.fail(f"{name} not installed: `make test` installs it (tests/install_debian.sh)", pytrace=False)
    return path


def test_setup_installed_prometheus_where_it_can():
    """CI runs as root with apt: there the tests above must run, never skip."""
    if not (_is_root() and shutil.which("apt-get")):
        pytest.skip("not root with apt-get: the set-up cannot install packages here")
    missing = [name for name in ("promtool", "prometheus") if shutil.which(name) is None]
    assert not missing, f"{missing} missing although root with apt-get: run tests/install_debian.sh"


def defined_series() -> set[str]:
    """Every series name flows/metrics.py exposes: counters as ``_total``, histograms as their three series."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for metric in vars(METRICS).values():
        desc = metric.describe()[0]
        names.update(desc.name + s for s in suffixes[desc.type])
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_check():
    out = subprocess.run([_binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_unit_tests():
    out = subprocess.run(
        [_binary("promtool"), "test", "rules", "alerts_test.yml"], cwd=PROM, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    cases = [
        case
        for test in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it stays quiet"


def test_alerts_use_only_metrics_the_pipeline_defines():
    defined = defined_series()
    for rule in alert_rules():
        used = set(re.findall(r"\bhrmcond_[a-z_]+", rule["expr"]))
        assert used <= defined, f"{rule['alert']}: {used - defined} not in flows/metrics.py"


def test_every_alert_links_to_its_runbook_section():
    headings = re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in alert_rules():
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"docs/operations.md has no section {rule['alert']}"


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "hrmcond.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_uses_only_metrics_the_pipeline_defines():
    defined, shown = defined_series(), set()
    for expr in dashboard_queries():
        used = set(re.findall(r"\bhrmcond_[a-z_]+", expr))
        assert used <= defined, f"{expr}: {used - defined} not in flows/metrics.py"
        shown |= used
    assert defined - shown <= {"hrmcond_context_latency_ms_sum", "hrmcond_context_latency_ms_count"}


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query as a recording rule's expression."""
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- a real server scraping a live run -------------------------------------------------------------------------


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _query(base: str, promql: str) -> list[dict]:
    out = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert out["status"] == "success", out
    return out["data"]["result"]


def _endpoint(port: int) -> dict[str, float]:
    """The run's own exposition, ``{'name{labels}': value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _wait(what: str, check, timeout_s: float, *procs: subprocess.Popen):
    """``check()`` until truthy (its value is returned), the deadline, or one of ``procs`` ending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[0]} ended (exit {proc.returncode}) while waiting for {what}"
        try:
            value = check()
        except OSError:  # not listening yet
            value = None
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port_pair(free_port) -> int:
    """A free port whose successor is free too: worker i of a run serves metrics on metrics.port + i."""
    import socket

    for _ in range(20):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    pytest.fail("no two consecutive free ports on 127.0.0.1")


def _count_messages(conf: dict[str, str], topic: str) -> int:
    """Messages now in ``topic``, read to the end of every partition."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({**conf, "group.id": uuid.uuid4().hex, "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        count, ended, deadline = 0, set(), time.monotonic() + 30
        while len(ended) < len(parts) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is None:
                count += 1
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                ended.add(msg.partition())
        return count
    finally:
        consumer.close()


@pytest.mark.kafka
def test_prometheus_scrapes_a_live_run(tmp_path, kafka_cluster, kafka_topics):
    """`hrmcond run --processes 2` on a simulated market, both workers' endpoints (metrics.port + process id)
    scraped every second by a Prometheus on loopback that also loads alerts.yml: the sums it stores are what the
    run did, and its rules are healthy."""
    from conditioning.sim.market import MarketConfig, simulate_market
    from flows.broker import free_port
    from flows.producer import produce_table, table_ticks

    prometheus = _binary("prometheus")
    market = simulate_market(MarketConfig(n_symbols=3, seed=5, trades_per_day=300))
    topics = kafka_topics("ticks", "contexts", "features", "dead_letter")
    conf = kafka_cluster.client_config
    produced = Counter(t.kind for t in table_ticks(market.ticks, market.reference))
    assert produce_table(conf, topics["ticks"], market.ticks, market.reference) == sum(produced.values())

    metrics_port, prom_port = _free_port_pair(free_port), free_port()
    targets = [f"127.0.0.1:{metrics_port + i}" for i in range(2)]
    base = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **base,
                "kafka": {"bootstrap_servers": kafka_cluster.bootstrap_servers, "topics": {**topics, "partitions": 3}},
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
            }
        )
    )
    # The scrape of deploy/prometheus/prometheus.yml, on this test's targets, every second.
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [{"job_name": "hrmcond", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    api = f"http://127.0.0.1:{prom_port}"
    with open(tmp_path / "prometheus.log", "w") as prom_log, open(tmp_path / "run.log", "w") as run_log:
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={scrape}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=prom_log,
            stderr=prom_log,
        )
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--processes", "2"],
            stdout=run_log,
            stderr=run_log,
        )
        try:

            def ticks_seen():  # the workers' own counts, by kind, once they have read the whole topic
                got = Counter()
                for i in range(2):
                    values = _endpoint(metrics_port + i)
                    got.update({k: values.get(f"hrmcond_ticks_total[('kind', '{k}')]", 0) for k in produced})
                return got == produced

            _wait("the run to read every tick", ticks_seen, 120, server, run)

            def settled():  # the tailing run emits its last bars once the partitions are idle: count it twice
                first = _count_messages(conf, topics["contexts"])
                time.sleep(1.5)
                return first > 0 and first == _count_messages(conf, topics["contexts"]) and first

            contexts = _wait("the contexts topic to stop growing", settled, 60, run)

            def scraped():
                ticks = {
                    r["metric"]["kind"]: float(r["value"][1])
                    for r in _query(api, 'sum by (kind) (hrmcond_ticks_total{job="hrmcond"})')
                }
                ctx = _query(api, 'sum(hrmcond_contexts_total{job="hrmcond"})')
                return ticks == produced and ctx and float(ctx[0]["value"][1]) == contexts

            _wait("Prometheus to store the run's final counts", scraped, 30, server, run)
            assert {r["metric"]["instance"]: r["value"][1] for r in _query(api, 'up{job="hrmcond"}')} == dict.fromkeys(
                targets, "1"
            )

            def evaluated():
                groups = _get(f"{api}/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r["health"] != "unknown" for r in rules) else None

            rules = _wait("the alert rules to be evaluated", evaluated, 30, server)
            assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
            assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
        finally:
            _stop(run)
            _stop(server)
    assert run.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
