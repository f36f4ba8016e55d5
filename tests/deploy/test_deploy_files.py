"""deploy/ as far as it can be checked without a container engine: the files parse, and what the compose file
and the Dockerfile refer to exists and agrees with the rest of the project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


YAML_FILES = sorted(p.relative_to(DEPLOY) for p in [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=str)
def test_yaml_parses(path):
    assert isinstance(yaml.safe_load((DEPLOY / path).read_text()), dict)


def test_compose_refers_to_files_that_exist():
    services = compose()["services"]
    build = services["hrmcond"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    binds = [v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if v.startswith(".")]
    assert binds, "no bind mounts found: the compose file changed shape"
    for source in binds:
        assert (DEPLOY / source).exists(), source


def test_prometheus_loads_the_alerts_the_compose_file_mounts():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["prometheus"]["volumes"] if v.startswith("."))
    assert mounts["./prometheus/alerts.yml"] in prom["rule_files"]
    assert [job["job_name"] for job in prom["scrape_configs"]] == ["hrmcond"]  # what the alerts select on


def test_prometheus_scrapes_every_worker_process_compose_starts():
    """Worker i serves metrics on 9464 + i: one target per process of the default HRMCOND_PROCESSES."""
    command = compose()["services"]["hrmcond"]["command"]
    processes = int(re.fullmatch(r"\$\{HRMCOND_PROCESSES:-(\d+)\}", command[command.index("--processes") + 1])[1])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"hrmcond:{9464 + i}" for i in range(processes)]


def test_topic_init_creates_the_topics_of_live_yaml():
    topics = yaml.safe_load((DEPLOY / "live.yaml").read_text())["kafka"]["topics"]
    env = compose()["services"]["topic-init"]["environment"]
    assert env["TOPICS"].split() == [topics[role] for role in ("ticks", "contexts", "features", "dead_letter")]
    assert int(env["PARTITIONS"]) == topics["partitions"]


def test_dockerfile_copies_files_that_exist_and_pins_the_makefiles_torch():
    text = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split()[:-1]:  # the last word is the destination
            assert (REPO / source).exists(), source
    makefile = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    assert f"ARG TORCH_SPEC={makefile}" in text
    assert re.search(r"^USER\s+(?!root)\S+", text, re.MULTILINE), "the image must not run as root"
