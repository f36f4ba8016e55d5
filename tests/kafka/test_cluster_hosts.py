"""A Bytewax cluster across hosts: two network namespaces, one `hrmcond run` worker process in each.

Each namespace is a host with addresses of its own: a link to the other host (the cluster's own traffic) and an
uplink to this machine's namespace, where the broker listens on the uplink's address::

    root namespace: broker at 10.x.y.1 ──uplink── host 0 (10.x.y.2)  10.x.y.9 ──peer link── 10.x.y.10  host 1
                    (10.x.y.5) ─────────────────────────────────────────uplink─────────────── (10.x.y.6) ──┘

The session broker is not used: it advertises 127.0.0.1, which inside a namespace is the namespace's own
loopback. The hosts talk over their own veth pair rather than a bridge, so no firewall's FORWARD policy (a
bridge's frames pass through it where br_netfilter is loaded) can stand between them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from conditioning.sim.market import MarketConfig, simulate_market
from flows.broker import EmbeddedBroker
from flows.live import build_live_flow
from flows.producer import produce_table
from flows.runner import run_process

from .conftest import contexts_of, make_config, read_topic

pytestmark = pytest.mark.kafka

#: Bytewax's port on each host: the same on both, as on real hosts (each namespace has its own ports).
CLUSTER_PORT = 7100
DONE = re.compile(r"done: (\d+) ticks read, (\d+) contexts and (\d+) dead letters written")


@dataclass(frozen=True)
class Host:
    netns: str
    address: str  # on the peer link: where the other host's worker reaches this one

    def inode(self) -> int:
        """The namespace's identity, as ``/proc/<pid>/ns/net`` of a process inside it shows (``net:[inode]``)."""
        return os.stat(f"/run/netns/{self.netns}").st_ino


@dataclass(frozen=True)
class TwoHosts:
    hosts: tuple[Host, Host]
    broker_host: str  # this namespace's end of host 0's uplink; host 1 reaches it through its own uplink


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def unused_subnet() -> ipaddress.IPv4Network:
    """A /28 in 10/8 that no route or address of this machine overlaps (another run's included)."""
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True).stdout or "[]")
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r["dst"] != "default"]
    rng = random.Random()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.{16 * rng.randrange(16)}/28")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /28 in 10/8")


@pytest.fixture
def two_hosts():
    """Two namespaces wired as in the module docstring; removed afterwards, whatever happened."""
    missing = [cmd for cmd in ("ip", "ss") if shutil.which(cmd) is None]
    if missing:
        if os.geteuid() != 0:
            pytest.skip(f"iproute2's {missing} not installed, and installing it needs root")
        pytest.fail(f"iproute2's {missing} not installed: `make test` installs it (tests/install_debian.sh)")
    tag = uuid.uuid4().hex[:6]  # unique names: other runs may be doing the same on this machine
    names = [f"hrmcond-{tag}-{i}" for i in range(2)]
    uplinks = [f"hc{tag}u{i}" for i in range(2)]  # interface names: at most 15 characters
    made: list[str] = []
    try:
        probe = subprocess.run(["ip", "netns", "add", names[0]], capture_output=True, text=True)
        if probe.returncode:
            pytest.skip(f"network namespaces cannot be created here: ip netns add: {probe.stderr.strip()}")
        made.append(names[0])
        ip("netns", "add", names[1])
        made.append(names[1])
        a = list(unused_subnet())  # .1/.2 uplink 0, .5/.6 uplink 1, .9/.10 the peer link (three /30s)
        ip("-n", names[0], "link", "add", "peer", "type", "veth", "peer", "name", "peer", "netns", names[1])
        for i, ns in enumerate(names):
            root_end, ns_end = a[4 * i + 1], a[4 * i + 2]
            ip("link", "add", uplinks[i], "type", "veth", "peer", "name", "uplink", "netns", ns)
            ip("addr", "add", f"{root_end}/30", "dev", uplinks[i])
            ip("link", "set", uplinks[i], "up")
            ip("-n", ns, "addr", "add", f"{ns_end}/30", "dev", "uplink")
            ip("-n", ns, "addr", "add", f"{a[9 + i]}/30", "dev", "peer")
            for link in ("lo", "uplink", "peer"):
                ip("-n", ns, "link", "set", link, "up")
            ip("-n", ns, "route", "add", "default", "via", str(root_end))
        yield TwoHosts((Host(names[0], str(a[9])), Host(names[1], str(a[10]))), broker_host=str(a[1]))
    finally:
        for ns in made:  # takes the veth pairs with it (a veth goes when either end's namespace goes)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in uplinks:  # left only if set-up failed half-way
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def cluster_connections(host: Host) -> set[tuple[str, str]]:
    """Established TCP connections in ``host``'s namespace, as (local, peer) ``address:port`` pairs."""
    out = subprocess.run(
        ["ip", "netns", "exec", host.netns, "ss", "-Htn", "state", "established"], capture_output=True, text=True
    ).stdout
    return {(f[-2], f[-1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 4}


def test_a_cluster_across_two_hosts_gives_the_records_of_one_process(tmp_path, two_hosts):
    market = simulate_market(MarketConfig(n_symbols=6, seed=5, trades_per_day=500))
    # one ticks topic, read by both runs; outputs apart
    one_topics, cluster_topics = (
        {"ticks": "ticks"} | {role: f"{run}-{role}" for role in ("contexts", "features", "dead_letter")}
        for run in ("one", "cluster")
    )
    with EmbeddedBroker(host=two_hosts.broker_host, topics={*one_topics.values(), *cluster_topics.values()}) as broker:
        one_cfg, _ = make_config(tmp_path, broker, one_topics)
        cluster_cfg, cluster_path = make_config(tmp_path, broker, cluster_topics)
        conf = broker.client_config
        produced = produce_table(conf, "ticks", market.ticks, market.reference)
        run_process(build_live_flow(one_cfg, until_eof=True))  # the single process, on this machine's namespace

        hosts = two_hosts.hosts
        addresses = ";".join(f"{h.address}:{CLUSTER_PORT}" for h in hosts)
        logs = [tmp_path / f"host{i}.log" for i in range(2)]
        procs = []
        try:
            for i, host in enumerate(hosts):
                cmd = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "flows.cli", "run"]
                cmd += ["--config", str(cluster_path), "--until-eof", "--process-id", str(i), "--addresses", addresses]
                with open(logs[i], "w") as log:
                    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            # While both run: the namespace each process is in, and the cluster's connection over the peer link.
            netns_seen: list[str | None] = [None, None]
            links: set[tuple[str, str]] = set()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and all(p.poll() is None for p in procs):
                for i, p in enumerate(procs):
                    with contextlib.suppress(FileNotFoundError):  # ended just now
                        netns_seen[i] = os.readlink(f"/proc/{p.pid}/ns/net")  # `ip netns exec` execs: same pid
                links |= {
                    (local, peer)
                    for local, peer in cluster_connections(hosts[0])
                    if local.startswith(f"{hosts[0].address}:") and peer.startswith(f"{hosts[1].address}:")
                }
                time.sleep(0.2)
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        out = [log.read_text() for log in logs]
        for i, p in enumerate(procs):
            assert p.returncode == 0, f"host {i}:\n{out[i][-3000:]}"

        # The condition: one process per host, each in its namespace at its own address, joined over the link.
        assert netns_seen == [f"net:[{h.inode()}]" for h in hosts]
        assert len({h.inode() for h in hosts} | {os.stat("/proc/self/ns/net").st_ino}) == 3
        for i, h in enumerate(hosts):
            assert f"worker process {i} of 2, at {h.address}:{CLUSTER_PORT}" in out[i], out[i][-3000:]
        # Bytewax's connection: host 1 dials host 0's listening port from host 1's address (or the reverse)
        assert any(
            local == f"{hosts[0].address}:{CLUSTER_PORT}" or peer == f"{hosts[1].address}:{CLUSTER_PORT}"
            for local, peer in links
        ), links

        # Each host did part of the work, and together all of it, once.
        done = [[int(n) for n in DONE.findall(text)[-1]] for text in out]
        ticks, contexts = [d[0] for d in done], [d[1] for d in done]
        assert all(ticks) and all(contexts) and not any(d[2] for d in done), done
        assert sum(ticks) == produced
        one = contexts_of(conf, one_cfg.kafka.topics.contexts)
        assert sum(contexts) == len(read_topic(conf, cluster_cfg.kafka.topics.contexts)) == len(one)

        # ... and the same records as the single process, apart from the measured latencies.
        cluster = contexts_of(conf, cluster_cfg.kafka.topics.contexts)
        assert cluster.keys() == one.keys() and one
        for key, rec in one.items():
            assert cluster[key].model_dump(exclude={"latency"}) == rec.model_dump(exclude={"latency"}), key
