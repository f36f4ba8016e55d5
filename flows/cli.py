"""``hrmcond``: the command line of the conditioning pipeline.

Every command validates its arguments and the configuration first and fails with one clear line
(exit 2) instead of a traceback for user errors.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from schemas.errors import HrmcondError

log = logging.getLogger("hrmcond")


# -- inputs -----------------------------------------------------------------------------------------------
def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["taq", "lobster", "canonical"], required=True)
    p.add_argument("--trades", type=Path, help="TAQ trades CSV(.gz)")
    p.add_argument("--quotes", type=Path, help="TAQ quotes CSV(.gz) (per venue; merged into an NBBO)")
    p.add_argument("--lobster", type=Path, help="LOBSTER zip, or its message CSV")
    p.add_argument("--ticks", type=Path, help="canonical ticks .csv/.csv.gz/.parquet")
    p.add_argument("--symbol", help="LOBSTER: symbol (default: from the file name)")
    p.add_argument("--date", help="LOBSTER: trading date YYYY-MM-DD (default: from the file name)")
    p.add_argument("--reference", type=Path, help="reference CSV: symbol,date,prev_close,tier")


def load_input(args: argparse.Namespace):
    """The tick table and reference rows named by the input arguments."""
    import datetime as dt

    from schemas.canonical import read_reference, read_ticks

    need = {"taq": ["trades"], "lobster": ["lobster"], "canonical": ["ticks"]}[args.format]
    missing = [f"--{n}" for n in need if getattr(args, n) is None]
    if missing:
        raise HrmcondError(f"--format {args.format} needs {' '.join(missing)}")
    if args.format == "taq":
        from flows.sources.taq import read_taq

        table = read_taq(args.trades, args.quotes)
    elif args.format == "lobster":
        from flows.sources.lobster import read_lobster

        date = dt.date.fromisoformat(args.date) if args.date else None
        table = read_lobster(args.lobster, args.symbol, date)
    else:
        table = read_ticks(args.ticks)
    reference = tuple(read_reference(args.reference)) if args.reference else ()
    return table, reference


def _config(args: argparse.Namespace):
    from flows.config import load_config

    return load_config(args.config)


# -- commands ---------------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> None:
    from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
    from flows.runner import run_process, spawn_cluster

    if args.out is None and args.features_out is None:
        raise HrmcondError("give --out (contexts) and/or --features-out (feature records)")
    outputs = ReplayOutputs(args.out, args.features_out, args.dead_letters_out)
    if args.processes > 1 and args.process_id is None:
        spawn_cluster(sys.argv[1:], args.processes)
    else:
        cfg = _config(args)
        table, reference = load_input(args)
        name = str(args.ticks or args.trades or args.lobster)
        flow = build_replay_flow(cfg, table, reference, outputs, source_name=name)
        log.info("replaying %d ticks, %d reference rows", table.num_rows, len(reference))
        addresses = args.addresses.split(";") if args.addresses else None
        run_process(flow, process_id=args.process_id or 0, addresses=addresses)
        if addresses is not None:
            return  # the parent merges once every worker is done
    counts = finish_replay(outputs)
    print("wrote " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))


def cmd_run(args: argparse.Namespace) -> None:
    from flows.live import build_live_flow
    from flows.metrics import serve
    from flows.runner import recovery_config, run_process, spawn_cluster

    cfg = _config(args)
    if args.recovery_dir is not None:
        cfg = cfg.model_copy(update={"recovery": cfg.recovery.model_copy(update={"dir": args.recovery_dir})})
    recovery = recovery_config(cfg.recovery, max(1, args.processes))  # initialised once, before any worker
    if args.processes > 1 and args.process_id is None:
        spawn_cluster(sys.argv[1:], args.processes)
        return
    serve(cfg.metrics.port)
    flow = build_live_flow(cfg, until_eof=args.until_eof)
    addresses = args.addresses.split(";") if args.addresses else None
    log.info("consuming %s from %s", cfg.kafka.topics.ticks, cfg.kafka.bootstrap_servers)
    run_process(flow, process_id=args.process_id or 0, addresses=addresses, recovery=recovery,
                epoch_s=cfg.recovery.snapshot_interval_s if recovery else 1.0)


def cmd_produce(args: argparse.Namespace) -> None:
    from flows.producer import produce_table

    cfg = _config(args)
    table, reference = load_input(args)
    conf = cfg.kafka.client_config()
    if args.bootstrap:
        conf["bootstrap.servers"] = args.bootstrap
    n = produce_table(conf, args.topic or cfg.kafka.topics.ticks, table, reference, speed=args.speed,
                      partitions=cfg.kafka.topics.partitions)
    print(f"produced {n} messages")


def cmd_broker(args: argparse.Namespace) -> None:
    from flows.broker import EmbeddedBroker

    cfg = _config(args)
    t = cfg.kafka.topics
    topics = [x for x in (t.ticks, t.contexts, t.features, t.dead_letter) if x]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port, topics=topics, partitions=t.partitions) as broker:
        print(f"embedded Kafka-protocol broker (Tansu, in memory) at {broker.bootstrap_servers}", flush=True)
        print(f"topics: {', '.join(topics)} ({t.partitions} partitions); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                raise HrmcondError("the broker process exited")


def cmd_export_schemas(args: argparse.Namespace) -> None:
    from schemas.export import export_schemas

    for path in export_schemas():
        print(path)


def cmd_demo(args: argparse.Namespace) -> None:
    from flows.demo import run_demo

    run_demo(symbols=args.symbols, seed=args.seed, config=args.config)


def cmd_zma_study(args: argparse.Namespace) -> None:
    from conditioning.sim import zma

    zma.main([] if args.days is None else ["--days", str(args.days)])


# -- parser -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrmcond", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def cfg_arg(p):
        p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults + HRMCOND__* env)")

    def cluster_args(p):
        p.add_argument("--processes", "-p", type=int, default=1, help="worker processes (scale-out)")
        p.add_argument("--process-id", "-i", type=int, help=argparse.SUPPRESS)
        p.add_argument("--addresses", "-a", help=argparse.SUPPRESS)

    p = sub.add_parser("replay", help="run the pipeline over tick files, deterministic JSONL output")
    add_input_args(p)
    cfg_arg(p)
    cluster_args(p)
    p.add_argument("--out", type=Path, help="contexts JSONL (omit with --features-out: features only, no model)")
    p.add_argument("--features-out", type=Path, help="feature records JSONL")
    p.add_argument("--dead-letters-out", type=Path, help="dead letters JSONL (default: beside --out)")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("run", help="run the pipeline live against Kafka")
    cfg_arg(p)
    cluster_args(p)
    p.add_argument("--until-eof", action="store_true", help="stop once the ticks now in the topic are consumed")
    p.add_argument("--recovery-dir", type=Path, help="Bytewax recovery store (created when missing)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("produce", help="replay a tick file into a Kafka topic")
    add_input_args(p)
    cfg_arg(p)
    p.add_argument("--bootstrap", help="override kafka.bootstrap_servers")
    p.add_argument("--topic", help="override kafka.topics.ticks")
    p.add_argument("--speed", type=float, default=0.0, help="real-time multiple (0 = as fast as possible)")
    p.set_defaults(fn=cmd_produce)

    p = sub.add_parser("broker", help="start an embedded Kafka-protocol broker for local work")
    cfg_arg(p)
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(fn=cmd_broker)

    p = sub.add_parser("demo", help="embedded broker + simulated day -> live pipeline -> summary")
    cfg_arg(p)
    p.add_argument("--symbols", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("export-schemas", help="regenerate schemas/json/*.schema.json")
    p.set_defaults(fn=cmd_export_schemas)

    p = sub.add_parser("zma-study", help="TSRV/RV simulation study (ZMA 2005 design); writes docs/zma_study.md")
    p.add_argument("--days", type=int)
    p.set_defaults(fn=cmd_zma_study)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.fn(args)
    except HrmcondError as err:
        print(f"hrmcond {args.command}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
