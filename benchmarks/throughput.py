"""Ticks per second through one process, live and in replay, and tick-to-context latency, side by side in one run.

Writes benchmarks/results/throughput.json. Run: ``.venv/bin/python benchmarks/throughput.py`` (minutes).

Input: a simulated day of ``SYMBOLS`` (40) symbols (seeded; ``BENCH_TRADES_PER_DAY`` trades per symbol, default
10,000: about 1.24 M ticks with the quotes, issue 12's day), every conditioning path on (deploy/local.yaml,
the shipped model). Measured, on an embedded broker (Tansu) and the same machine:

- ``raw_consume``: the ticks topic (``PARTITIONS`` partitions) read to its end by one confluent-kafka consumer
  per partition (threads), nothing decoded: the broker's and client's ceiling here;
- ``live``: ``hrmcond run --until-eof`` in-process (``build_live_flow``, one worker) over the same topic,
  start-up included and given separately (the flow built and run on an empty topic); ``ratio_to_raw``;
- ``replay``: ``hrmcond replay --format canonical`` of the same day from parquet, as a subprocess: wall time,
  the replay's own ticks/s line, peak RSS; and with ``--processes 2`` (the speed-up over one); and with
  ``--features-out`` only (no model, no pattern library: the source and the bar step alone);
- ``latency``: the live pipeline tailing the topic (``hrmcond run`` subprocess) while the day is produced paced at
  half the measured live maximum, and unpaced (saturation). Per context: from the produce time of the tick
  that closed its bar (the first tick of every partition at or past the bar end plus the allowed lateness:
  the inference step waits for all of them) to the context being read from the contexts topic; and the
  bar-close wait (from the produce time of the first tick at or past the bar end, to that closing tick).
  The same simulated day, dated the first full session after tomorrow: the run starts on an empty topic,
  where an idle partition's event time follows the wall clock (flows/sources/kafka.py), as it does live
  before the open. A day from the past would be behind every clock at once, and its bars would go out only
  at the next wall-clock bar boundary, whatever the pipeline's speed (p50 46 s for a day it processed in 5 s).

Figures depend on the machine's load: ``load_average_at_start``, and ``host`` (the machine) at the end.
``BENCH_PARTS=replay`` runs the replay part alone (with ``BENCH_LABEL``, into its own results file).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from peak_rss import command, peak_rss_mib
from results_file import LABEL, bench_parts, write_results

from conditioning.sim.market import MarketConfig, full_session, simulate_market
from flows.broker import EmbeddedBroker
from flows.config import AppConfig, load_config
from flows.kafka import ensure_topics
from flows.live import build_live_flow
from flows.producer import table_ticks
from flows.runner import run_process
from schemas.canonical import write_ticks
from schemas.reference import write_reference
from schemas.session import next_trading_day

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "local.yaml"
SYMBOLS = int(os.environ.get("BENCH_SYMBOLS", "40"))
TRADES_PER_DAY = float(os.environ.get("BENCH_TRADES_PER_DAY", "10000"))
PARTITIONS = 4
#: The latency runs end once no context has come for this long after the last tick was produced.
QUIET_S = float(os.environ.get("BENCH_QUIET_S", "15"))
#: The parts to run: any of ``replay,live,latency``. Latency without live paces at ``BENCH_RATE`` ticks/s (live's half
#: maximum otherwise).
PARTS = bench_parts("replay,live,latency")
RATE = os.environ.get("BENCH_RATE")
#: Paced production sends the messages due every this many seconds in one burst.
PACE_S = 0.002
HRMCOND = str(Path(sys.executable).with_name("hrmcond"))


def day(date: dt.date):
    """The simulated day (seeded): ``SYMBOLS`` symbols, ``TRADES_PER_DAY`` trades each, quotes and reference."""
    return simulate_market(MarketConfig(n_symbols=SYMBOLS, n_days=1, seed=7, start=date, trades_per_day=TRADES_PER_DAY))


def future_session() -> dt.date:
    """The first full session after tomorrow: a day whose ticks are all ahead of the wall clock."""
    date = next_trading_day(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1))
    while not full_session(date):
        date = next_trading_day(date)
    return date


def bench_config(bootstrap: str) -> AppConfig:
    cfg = load_config(CONFIG, env={})
    suffix = uuid.uuid4().hex[:6]
    topics = cfg.kafka.topics.model_copy(
        update={
            "ticks": f"bench-{suffix}-ticks",
            "contexts": f"bench-{suffix}-contexts",
            "features": None,
            "dead_letter": f"bench-{suffix}-dead",
            "partitions": PARTITIONS,
        }
    )
    return cfg.model_copy(
        update={"kafka": cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap, "topics": topics})}
    )


def env_of(cfg: AppConfig) -> dict[str, str]:
    """The same configuration for an ``hrmcond`` subprocess (HRMCOND__* overrides on deploy/local.yaml)."""
    t = cfg.kafka.topics
    return {
        **os.environ,
        "HRMCOND__KAFKA__BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers,
        "HRMCOND__KAFKA__TOPICS__TICKS": t.ticks,
        "HRMCOND__KAFKA__TOPICS__CONTEXTS": t.contexts,
        "HRMCOND__KAFKA__TOPICS__FEATURES": "null",
        "HRMCOND__KAFKA__TOPICS__DEAD_LETTER": t.dead_letter,
        "HRMCOND__KAFKA__TOPICS__PARTITIONS": str(PARTITIONS),
    }


def encoded(market) -> list[tuple[bytes, bytes, int]]:
    """(key, value, ts_ns) of every tick in produce order (as ``hrmcond produce`` numbers them)."""
    return [
        (t.symbol.encode(), t.model_dump_json(exclude_none=True).encode(), t.ts_ns)
        for t in table_ticks(market.ticks, market.reference)
    ]


def produce(conf: dict, topic: str, msgs, rate: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Produce ``msgs`` (at ``rate`` messages/s, or as fast as possible); per message: the wall time of its
    produce call and its partition (from the delivery report)."""
    producer = Producer({**conf, "linger.ms": 5})
    sent = np.zeros(len(msgs))
    parts = np.full(len(msgs), -1, dtype=np.int64)

    def delivered(i: int):
        def report(err, msg) -> None:
            if err is None:
                parts[i] = msg.partition()

        return report

    t0 = time.time()
    for i, (key, value, _) in enumerate(msgs):
        if rate and (ahead := t0 + i / rate - time.time()) > PACE_S:
            # asleep, then a burst of the messages due: waiting in poll() spun, a core of this box (measured)
            # taken from the pipeline under test
            time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value, key=key, on_delivery=delivered(i))
                break
            except BufferError:
                producer.poll(0.05)
        sent[i] = time.time()
        producer.poll(0)
    producer.flush(60)
    return sent, parts


def raw_consume(conf: dict, topic: str, partitions: int) -> dict:
    """One consumer per partition, each in a thread, from the start to the partition's end."""
    counts = [0] * partitions

    def read(p: int) -> None:
        c = Consumer({**conf, "group.id": f"raw-{uuid.uuid4().hex[:6]}", "enable.partition.eof": True})
        c.assign([TopicPartition(topic, p, 0)])
        while True:
            msgs = c.consume(1000, 1.0)
            if any(m.error() is not None for m in msgs):
                counts[p] += sum(m.error() is None for m in msgs)
                break
            counts[p] += len(msgs)
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=read, args=(p,)) for p in range(partitions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"messages": sum(counts), "wall_s": wall, "ticks_per_s": sum(counts) / wall}


def cpu_s(who: int) -> float:
    """User + system CPU seconds so far of this process (``RUSAGE_SELF``, all its threads) or its waited-for
    children: on a loaded machine, a figure less dependent on what else runs than the wall clock."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a running process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def live(cfg: AppConfig, n: int) -> dict:
    t0, c0 = time.perf_counter(), cpu_s(resource.RUSAGE_SELF)
    run_process(build_live_flow(cfg, until_eof=True))
    wall, cpu = time.perf_counter() - t0, cpu_s(resource.RUSAGE_SELF) - c0
    return {"ticks": n, "wall_s": wall, "cpu_s": cpu, "ticks_per_cpu_s": n / cpu if cpu else None}


def replay(ticks: Path, reference: Path, processes: int, n: int, contexts: bool = True) -> dict:
    """``hrmcond replay`` as a subprocess; its own ticks/s and, with one process, its peak RSS (benchmarks/
    peak_rss.py). Without ``contexts``: ``--features-out`` only (the features, no model: the bar step's own speed)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = command("replay", "--config", str(CONFIG), "--format", "canonical", "--ticks", str(ticks))
        cmd += ["--reference", str(reference), "--processes", str(processes)]
        cmd += ["--out", f"{tmp}/ctx.jsonl"] if contexts else ["--features-out", f"{tmp}/features.jsonl"]
        t0, c0 = time.perf_counter(), cpu_s(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall, cpu = time.perf_counter() - t0, cpu_s(resource.RUSAGE_CHILDREN) - c0
    out = {
        "processes": processes,
        "contexts": contexts,
        "ticks": n,
        "wall_s": wall,
        "ticks_per_s_wall": n / wall,
        "cpu_s": cpu,  # every process of the replay, start-up included
        "ticks_per_cpu_s": n / cpu,
        "peak_rss_mib": peak_rss_mib(done.stderr) if processes == 1 else None,  # (a parent's is not the run's)
    }
    line = re.search(r"ticks in\s+([\d,]+)\s+\(([\d,]+) ticks/s end to end, ([\d.]+) s\)", done.stdout)
    if contexts:  # (the summary comes with contexts)
        assert line and int(line[1].replace(",", "")) == n, done.stdout[-2000:]
        out |= {"ticks_per_s_reported": int(line[2].replace(",", "")), "reported_s": float(line[3])}
    return out


def read_contexts(conf: dict, topic: str, arrivals: dict, stop: threading.Event) -> None:
    """Wall time each (symbol, window_end_ns) context was read from the contexts topic."""
    # without a short fetch wait the embedded broker holds each fetch for librdkafka's 500 ms (flows/config.py)
    c = Consumer({**conf, "group.id": f"lat-{uuid.uuid4().hex[:6]}", "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])  # no group join to wait for
    while not stop.is_set():
        for m in c.consume(500, 0.2):
            if m.error() is None:
                now = time.time()
                key = m.key().decode()
                end = int(re.search(rb'"window_end_ns":(\d+)', m.value())[1])
                arrivals.setdefault((key, end), now)
    c.close()


def latency(cfg: AppConfig, msgs, rate: float | None) -> dict:
    """The pipeline tails the topic (subprocess) while the day is produced (paced at ``rate``, or unpaced)."""
    conf = cfg.kafka.client_config()
    k = cfg.kafka
    ensure_topics(conf, k.topic_names(), PARTITIONS)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [HRMCOND, "run", "--config", str(CONFIG)], env=env_of(cfg), stdout=log, stderr=subprocess.STDOUT
    )
    arrivals: dict[tuple[str, int], float] = {}
    stop = threading.Event()
    reader = threading.Thread(target=read_contexts, args=(conf, k.topics.contexts, arrivals, stop))
    reader.start()
    started = time.monotonic()  # the pipeline's start-up (imports, model load) is not in the figures
    while b"consuming " not in Path(f"/proc/self/fd/{log.fileno()}").read_bytes() and time.monotonic() - started < 300:
        time.sleep(0.5)
    time.sleep(3.0)
    startup_cpu_s = process_cpu_s(proc.pid)
    sent, parts = produce(conf, k.topics.ticks, msgs, rate)
    seen, quiet_since, deadline = 0, time.monotonic(), time.monotonic() + 300
    while time.monotonic() < deadline:  # until the contexts stop coming (the last bars close on idle)
        time.sleep(1.0)
        if len(arrivals) != seen:
            seen, quiet_since = len(arrivals), time.monotonic()
        elif seen and time.monotonic() - quiet_since >= QUIET_S:
            break
    stop.set()
    reader.join()
    pipeline_cpu_s = process_cpu_s(proc.pid) - startup_cpu_s
    load = [round(x, 2) for x in os.getloadavg()]
    proc.terminate()
    proc.wait(timeout=60)
    log.seek(0)
    if not arrivals:
        raise RuntimeError(f"no context came from the pipeline; its output ends:\n{log.read()[-3000:].decode()}")
    lateness = cfg.pipeline.allowed_lateness_ms * 10**6
    bar = cfg.pipeline.bar_ms * 10**6
    ts = np.array([t for _, _, t in msgs])
    keep = parts >= 0
    closing, waits, lat = {}, [], []
    for (_, end), seen in arrivals.items():
        if end not in closing:
            # the first tick at or past the bar end + lateness in each partition: the last of them closes the bar
            firsts = []
            for p in range(PARTITIONS):
                idx = np.flatnonzero(keep & (parts == p) & (ts >= end + lateness))
                firsts.append(sent[idx[0]] if idx.size else np.nan)
            first_past_end = np.flatnonzero(ts >= end)
            closing[end] = (max(firsts), sent[first_past_end[0]] if first_past_end.size else np.nan)
        closed_at, end_at = closing[end]
        if np.isfinite(closed_at):
            lat.append((seen - closed_at) * 1e3)
            waits.append((closed_at - end_at) * 1e3)
    produce_s = float(sent.max() - sent.min())
    return {
        "rate_ticks_per_s": rate,
        "produced": len(msgs),
        "produce_s": produce_s,
        "achieved_produce_rate": len(msgs) / produce_s,
        # the tailing run's user + system CPU from the first tick produced to the end (its start-up left out)
        "pipeline_cpu_s": pipeline_cpu_s,
        "ticks_per_pipeline_cpu_s": len(msgs) / pipeline_cpu_s,
        "load_average_at_end": load,  # the machine is shared: a starved pipeline falls behind at any rate
        "contexts_read": len(arrivals),
        "contexts_timed": len(lat),
        "tick_to_context_ms": pcts(lat),
        "bar_close_wait_ms": pcts(waits),
        "bar_ms": bar // 10**6,
        "allowed_lateness_ms": lateness // 10**6,
    }


def pcts(v) -> dict:
    if not len(v):
        return {}
    p50, p99 = np.percentile(np.asarray(v), [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(np.max(v)), "n": len(v)}


def main() -> None:
    market = day(dt.date(2024, 3, 4))
    n = market.ticks.num_rows + len(market.reference)
    result: dict = {
        "input": {"symbols": SYMBOLS, "days": 1, "ticks": n, "partitions": PARTITIONS},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    result["code"] = {"label": LABEL or "this checkout", "flows_from": str(Path(build_live_flow.__code__.co_filename))}
    if "replay" in PARTS:
        with tempfile.TemporaryDirectory() as tmp:
            ticks, reference = Path(tmp) / "ticks.parquet", Path(tmp) / "reference.csv"
            write_ticks(market.ticks, ticks)
            write_reference(market.reference, reference)
            # smallest first: peak RSS is only known for a child that is the largest so far
            result["replay_features_only"] = replay(ticks, reference, 1, n, contexts=False)
            result["replay"] = replay(ticks, reference, 1, n)
            result["replay_2_processes"] = replay(ticks, reference, 2, n)
        result["replay_2_processes"]["speedup"] = result["replay"]["wall_s"] / result["replay_2_processes"]["wall_s"]
        print("replay", result["replay"], result["replay_2_processes"], result["replay_features_only"], flush=True)
        write_results("throughput", result)  # as it goes: a later part that fails leaves the earlier figures
    with EmbeddedBroker() as broker:
        if "live" in PARTS:
            msgs = encoded(market)
            cfg = bench_config(broker.bootstrap_servers)
            conf = cfg.kafka.client_config()
            ensure_topics(conf, cfg.kafka.topic_names(), PARTITIONS)
            produce(conf, cfg.kafka.topics.ticks, msgs)
            result["raw_consume"] = raw_consume(conf, cfg.kafka.topics.ticks, PARTITIONS)
            empty = bench_config(broker.bootstrap_servers)
            startup = live(empty, 0)["wall_s"]
            run = live(cfg, n)
            run["startup_s"] = startup
            run["ticks_per_s"] = n / run["wall_s"]
            run["ticks_per_s_after_startup"] = n / max(1e-9, run["wall_s"] - startup)
            run["ratio_to_raw"] = run["ticks_per_s"] / result["raw_consume"]["ticks_per_s"]
            result["live"] = run
            print("live", run, result["raw_consume"], flush=True)
            write_results("throughput", result)
        if "latency" not in PARTS:
            return
        half = float(RATE) if RATE else result["live"]["ticks_per_s_after_startup"] / 2
        ahead = encoded(day(future_session()))
        result["latency_half_max"] = latency(bench_config(broker.bootstrap_servers), ahead, half)
        print("latency at half", result["latency_half_max"], flush=True)
        result["latency_saturation"] = latency(bench_config(broker.bootstrap_servers), ahead, None)
        print("latency", result["latency_half_max"], result["latency_saturation"], flush=True)
    write_results("throughput", result, echo=True)


if __name__ == "__main__":
    main()
