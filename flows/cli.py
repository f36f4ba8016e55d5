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
import time
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

    from schemas.canonical import read_ticks
    from schemas.reference import read_reference

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
    from conditioning.manifest import verify_model
    from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
    from flows.runner import cluster_addresses, run_process, spawn_cluster

    if args.out is None and args.features_out is None:
        raise HrmcondError("give --out (contexts) and/or --features-out (feature records)")
    outputs = ReplayOutputs(args.out, args.features_out, args.dead_letters_out)
    started = time.perf_counter()
    cfg = _config(args)
    if outputs.contexts is not None:  # before any worker starts: inside one, a bad model ends in a traceback
        verify_model(cfg.model.dir, cfg.conditioning)
    addresses = cluster_addresses(args.process_id, args.addresses, args.processes)
    if args.processes > 1 and addresses is None:
        # Each worker process reads the input itself; this one only waits for them (the cores are theirs
        # while they run) and takes the input's size from worker 0 rather than reading it all again.
        spawn_cluster(sys.argv[1:], args.processes)
        n_ticks = int(outputs.input_size_path.read_text())
        outputs.input_size_path.unlink()
    else:
        table, reference = load_input(args)
        n_ticks = table.num_rows + len(reference)
        name = str(args.ticks or args.trades or args.lobster)
        flow = build_replay_flow(cfg, table, reference, outputs, source_name=name)
        log.info("replaying %d ticks, %d reference rows", table.num_rows, len(reference))
        run_process(flow, process_id=args.process_id or 0, addresses=addresses)
        if addresses is not None:
            if args.process_id == 0:
                outputs.input_size_path.write_text(str(n_ticks))
            return  # the parent merges once every worker is done
    counts = finish_replay(outputs)
    print("wrote " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
    if outputs.contexts is not None and args.process_id is None:
        from flows.summary import summarise
        from schemas.records import ContextRecord, DeadLetter

        contexts = [ContextRecord.model_validate_json(x) for x in outputs.contexts.read_bytes().splitlines()]
        dead = [DeadLetter.model_validate_json(x) for x in outputs.dead_letters_path.read_bytes().splitlines()]
        print(summarise(f"replay of {args.format} input", n_ticks, time.perf_counter() - started, contexts, dead))


def cmd_run(args: argparse.Namespace) -> None:
    from conditioning.artifacts import verify_model
    from flows.lifecycle import STOP
    from flows.live import build_live_flow
    from flows.metrics import METRICS, serve, total
    from flows.runner import cluster_addresses, recovery_config, run_process, spawn_cluster

    addresses = cluster_addresses(args.process_id, args.addresses, args.processes)
    cfg = _config(args)
    verify_model(cfg.model.dir, cfg.conditioning)  # before any worker starts (see cmd_replay)
    if args.recovery_dir is not None:
        cfg = cfg.model_copy(update={"recovery": cfg.recovery.model_copy(update={"dir": args.recovery_dir})})
    # one store partition per worker process of the whole cluster; initialised once, before any local worker
    recovery = recovery_config(cfg.recovery, len(addresses) if addresses else max(1, args.processes))
    if args.processes > 1 and addresses is None:
        spawn_cluster(sys.argv[1:], args.processes)
        return
    if args.process_id and cfg.metrics.port is not None:  # one endpoint per worker process: port + process id
        cfg = cfg.model_copy(
            update={"metrics": cfg.metrics.model_copy(update={"port": cfg.metrics.port + args.process_id})}
        )
    serve(cfg.metrics, cfg.pipeline.session.calendar)
    _stop_on_signals()
    flow = build_live_flow(cfg, until_eof=args.until_eof)
    if addresses is not None:
        log.info("worker process %d of %d, at %s", args.process_id, len(addresses), addresses[args.process_id])
    log.info("consuming %s from %s", cfg.kafka.topics.ticks, cfg.kafka.bootstrap_servers)
    run_process(
        flow,
        process_id=args.process_id or 0,
        addresses=addresses,
        recovery=recovery,
        epoch_s=cfg.recovery.snapshot_interval_s if recovery else 1.0,
    )
    # this process's share of the work (in a cluster, each process reports its own)
    log.info(
        "done: %d ticks read, %d contexts and %d dead letters written",
        total(METRICS.ticks),
        total(METRICS.contexts),
        total(METRICS.dead_letters),
    )
    if STOP.error is not None:
        raise STOP.error
    if STOP.requested.is_set():
        log.info(
            "stopped by signal; output up to the last completed batch delivered%s",
            ", resume with the same --recovery-dir" if recovery else "",
        )


def _stop_on_signals() -> None:
    """SIGTERM (an orchestrator's stop) and SIGINT ask the source to stop at its next poll (flows/lifecycle.py);
    a second signal interrupts at once."""
    from flows.lifecycle import STOP

    def handler(signum: int, frame) -> None:
        if STOP.requested.is_set():
            raise KeyboardInterrupt
        log.info("%s received: stopping", signal.Signals(signum).name)
        STOP.request()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def cmd_produce(args: argparse.Namespace) -> None:
    from flows.producer import produce_table

    cfg = _config(args)
    table, reference = load_input(args)
    conf = cfg.kafka.client_config()
    if args.bootstrap:
        conf["bootstrap.servers"] = args.bootstrap
    n = produce_table(
        conf,
        args.topic or cfg.kafka.topics.ticks,
        table,
        reference,
        speed=args.speed,
        partitions=cfg.kafka.topics.partitions,
        unavailable_after_s=cfg.kafka.unavailable_after_s,
    )
    print(f"produced {n} messages")


def cmd_broker(args: argparse.Namespace) -> None:
    from flows.broker import EmbeddedBroker

    cfg = _config(args)
    t = cfg.kafka.topics
    topics = cfg.kafka.topic_names()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port, host=args.host, topics=topics, partitions=t.partitions) as broker:
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

    zma.main(args.rest)


def cmd_simulate(args: argparse.Namespace) -> None:
    from conditioning.sim import market

    market.main(args.rest)


def _feature_table(paths: list[Path]):
    from conditioning.datasets import feature_table, read_feature_records

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise HrmcondError(
            f"feature files not found: {', '.join(missing)} (make them with hrmcond replay --features-out)"
        )
    table = feature_table(read_feature_records(paths))
    if not len(table):
        raise HrmcondError(f"no feature records in {', '.join(map(str, paths))}")
    return table


def cmd_train_regime(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from conditioning.artifacts import save_model
    from conditioning.labels import DOMINANCE, EvidenceRules, truth_labels
    from conditioning.regime import REGIME_NAMES
    from conditioning.sim.market import read_truth
    from conditioning.system import ConditioningSystem
    from conditioning.train import fit_regime_classifier
    from flows.bars import feature_params

    cfg = _config(args)
    table = _feature_table(args.features)
    if args.truth is not None:
        stretches, _ = read_truth(args.truth)
        params = feature_params(cfg.pipeline)
        labels = truth_labels(table.symbol, table.window_end_ns, table.raw, stretches, params)
        source = {"source": "simulator truth", "truth": args.truth.name, "dominance": DOMINANCE}
    else:
        rules = EvidenceRules()
        labels = rules.apply(table.raw, table.pattern)
        source = {"source": "evidence rules", **rules.to_dict()}
    shares = np.bincount(labels, minlength=len(REGIME_NAMES)) / len(labels)
    print(
        f"{len(table):,} feature records, labels from {source['source']}: "
        + ", ".join(f"{n} {s:.1%}" for n, s in zip(REGIME_NAMES, shares, strict=True))
    )
    torch.manual_seed(args.seed)  # the heads trained later with HRM start from a reproducible init
    fit = fit_regime_classifier(table.raw, labels, epochs=args.epochs, seed=args.seed)
    system = ConditioningSystem(cfg.conditioning)
    system.regime_classifier.load_state_dict(fit.model.state_dict())
    extra = {**fit.summary(), "labels": {**source, "shares": dict(zip(REGIME_NAMES, shares.tolist(), strict=True))}}
    save_model(args.out, system, fit.normalizer, training_fingerprint=fit.fingerprint, extra=extra)
    width = max(map(len, REGIME_NAMES))
    print(f"held-out accuracy {fit.accuracy:.3f}, Cohen's kappa {fit.kappa:.3f}; confusion (rows: label):")
    print(" " * (width + 1) + " ".join(f"{n[:6]:>6}" for n in REGIME_NAMES))
    for name, row in zip(REGIME_NAMES, fit.confusion, strict=True):
        print(f"{name:>{width}} " + " ".join(f"{v:>6d}" for v in row))
    print(f"model written to {args.out}")


def cmd_evaluate_regimes(args: argparse.Namespace) -> None:
    import datetime as dt

    from conditioning.regime_eval import evaluate_regimes, label_shares
    from conditioning.sim.market import MarketConfig, simulate_market
    from flows.bars import feature_params

    cfg = _config(args)
    params = feature_params(cfg.pipeline)
    market = simulate_market(
        MarketConfig(n_symbols=args.symbols, n_days=args.days, seed=args.seed, start=dt.date.fromisoformat(args.start))
    )
    report = evaluate_regimes(market, args.model, params=params)
    print(
        f"regime classifier {args.model} against the truth of a simulated market ({report.n_symbols} symbols x "
        f"{report.n_days} days, seed {args.seed}; bars whose {report.lookback_bars}-bar lookback lies inside one "
        f"regime, after a {report.warmup_bars}-bar warm-up):"
    )
    print(report.table())
    doc: dict = {"simulated": report.model_dump()}
    if args.features:
        shares = label_shares(_feature_table(args.features), args.model)
        doc["samples"] = {"features": [str(p) for p in args.features], **shares.model_dump()}
        print(f"label shares on {', '.join(map(str, args.features))} ({shares.n_bars:,} bars):")
        for name, values in (("classifier", shares.classifier), ("evidence rules", shares.evidence_rules)):
            print(f"  {name:<15}" + ", ".join(f"{n} {v:.1%}" for n, v in values.items() if v > 0))
        print(f"  agreement (Cohen's kappa) {shares.agreement_kappa:.3f}")
    if args.out is not None:
        import json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"report written to {args.out}")
    worst = min(r for r in report.recall.values() if r is not None)
    if args.min_recall is not None and worst < args.min_recall:
        raise HrmcondError(f"lowest per-class recall {worst:.3f} is below --min-recall {args.min_recall}")


def cmd_build_patterns(args: argparse.Namespace) -> None:
    import datetime as dt

    from conditioning.artifacts import load_model, save_model
    from conditioning.train import build_pattern_library

    table = _feature_table(args.features)
    model = load_model(args.model)
    as_of = None
    if args.as_of:
        as_of = int(dt.datetime.fromisoformat(args.as_of).astimezone(dt.UTC).timestamp() * 1e9)
    patterns = [p for p in table.patterns if as_of is None or p.outcome_end_ns <= as_of]
    build_pattern_library(patterns, rag=model.system.pattern_rag, as_of_ns=as_of)
    manifest = model.manifest
    extra = {
        **manifest.get("extra", {}),
        "pattern_library": {
            "patterns_seen": len(patterns),
            "patterns_kept": model.system.pattern_rag.size,
            "as_of_ns": as_of,
        },
    }
    save_model(
        args.model, model.system, model.normalizer, training_fingerprint=manifest["training_fingerprint"], extra=extra
    )
    print(
        f"pattern library: {model.system.pattern_rag.size:,} of {len(patterns):,} point-in-time patterns "
        f"-> {args.model}"
    )


def cmd_dataset(args: argparse.Namespace) -> None:
    from conditioning.artifacts import verify_model
    from flows.contexts import model_version
    from flows.dataset import build_dataset

    cfg = _config(args)
    verify_model(cfg.model.dir, cfg.conditioning)
    table, reference = load_input(args)
    out = build_dataset(cfg, table, reference, args.out, model_version=model_version(cfg.model.dir))
    with_context = sum(out.column("has_context").to_pylist())
    print(f"wrote {out.num_rows:,} bars ({with_context:,} with a context) to {args.out}")


def cmd_train_conditioning(args: argparse.Namespace) -> None:
    from conditioning.value import TrainSettings, train_conditioning

    cfg = _config(args)
    settings = TrainSettings(seed=args.seed, steps=args.steps)
    report = train_conditioning(args.dataset, args.model, cfg.conditioning, settings)
    print(report)


def cmd_audit_leakage(args: argparse.Namespace) -> None:
    import numpy as np

    from conditioning.audit import audit_leakage
    from schemas.records import ContextRecord
    from schemas.session import trading_date

    with open(args.contexts, "rb") as f:
        records = [ContextRecord.model_validate_json(line) for line in f if line.strip()]
    if not records:
        raise HrmcondError(f"no context records in {args.contexts}")
    ids = np.array([r.symbol for r in records])
    episodes = np.array([f"{r.symbol}@{trading_date(r.window_end_ns)}" for r in records])
    outputs = {"context (256-d, k-means codes)": np.array([r.context for r in records], dtype=np.float32)}
    if all(r.regime is not None for r in records):
        from conditioning.regime import REGIME_INDEX

        outputs["emitted regime"] = np.array([REGIME_INDEX[r.regime] for r in records if r.regime is not None])
    print(
        f"MI(output, id) with id = symbol (the puzzle id HRM would see), episodes = symbol-days: "
        f"{len(records):,} samples, {len(set(ids))} ids, {len(set(episodes))} episodes"
    )
    failed = False
    for name, out in outputs.items():
        rep = audit_leakage(out, ids, episodes, n_permutations=args.permutations, seed=args.seed)
        o, c = rep.observed, rep.control
        verdict = "LEAK" if o.excess_bits >= rep.max_bits else "within budget"
        detect = "detectable" if o.p_value < 0.05 else "not detectable"
        print(
            f"- {name}: MI {o.mi_bits:.4f} bits (null {o.null_mean_bits:.4f}, excess {o.excess_bits:+.4f} bits, "
            f"{detect} at p={o.p_value:.3f}) -> {verdict}; positive control: excess {c.excess_bits:+.4f} bits, "
            f"p={c.p_value:.3f} -> {'caught' if c.flagged else 'MISSED'}"
        )
        failed |= not rep.within_budget
    print("audit " + ("FAILED" if failed else "passed") + " (excess MI < 0.1 bits, positive control caught)")
    if failed:
        raise SystemExit(1)


# -- parser -----------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> None:
    from flows.replay import ReplayOutputs
    from flows.report import load, write_report

    if args.contexts is None and args.features is None:
        raise HrmcondError("give --contexts and/or --features (the outputs of hrmcond replay)")
    dead = ReplayOutputs(args.contexts, args.features, args.dead_letters).dead_letters_path
    day = load(args.contexts, args.features, dead)
    write_report(day, args.out)
    print(
        f"wrote {args.out}: {len(day.contexts)} contexts, {len(day.features)} feature records, "
        f"{len(day.dead)} dead letters"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrmcond", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    def cfg_arg(p):
        p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults + HRMCOND__* env)")

    def cluster_args(p, across_hosts: bool):
        p.add_argument(
            "--processes", "-p", type=int, default=1, help="worker processes on this host, one worker each (scale-out)"
        )
        # replay's worker processes write part files that their parent merges: one host only
        p.add_argument(
            "--process-id",
            "-i",
            type=int,
            help="across hosts: this process's index in --addresses (0 to N-1); start one process per address"
            if across_hosts
            else argparse.SUPPRESS,
        )
        p.add_argument(
            "--addresses",
            "-a",
            help='across hosts: every process\'s "host:port", separated by ";", the same list on every host '
            "(process i listens on entry i; the others must reach it there)"
            if across_hosts
            else argparse.SUPPRESS,
        )

    p = sub.add_parser("replay", help="run the pipeline over tick files, deterministic JSONL output")
    add_input_args(p)
    cfg_arg(p)
    cluster_args(p, across_hosts=False)
    p.add_argument("--out", type=Path, help="contexts JSONL (omit with --features-out: features only, no model)")
    p.add_argument("--features-out", type=Path, help="feature records JSONL")
    p.add_argument("--dead-letters-out", type=Path, help="dead letters JSONL (default: beside --out)")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser(
        "run",
        help="run the pipeline live against Kafka",
        description="Run the pipeline live against Kafka. On one host, --processes N starts N worker processes. "
        "Across hosts, start one process per entry of --addresses, each with the same list and its own "
        "--process-id: together they are one Bytewax cluster that shares out the ticks topic's partitions "
        "(docs/operations.md, 'Scaling out').",
    )
    cfg_arg(p)
    cluster_args(p, across_hosts=True)
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
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on and advertise; clients on other hosts need one they reach (not 0.0.0.0)",
    )
    p.set_defaults(fn=cmd_broker)

    p = sub.add_parser("demo", help="embedded broker + simulated day -> live pipeline -> summary")
    cfg_arg(p)
    p.add_argument("--symbols", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("export-schemas", help="regenerate schemas/json/*.schema.json")
    p.set_defaults(fn=cmd_export_schemas)

    p = sub.add_parser("zma-study", help="TSRV/RV simulation study (ZMA 2005 design); writes docs/zma_study.md")
    p.set_defaults(fn=cmd_zma_study)

    p = sub.add_parser(
        "simulate", help="simulated multi-symbol market -> canonical ticks + reference CSV", add_help=False
    )
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("train-regime", help="fit the normaliser and the regime classifier from feature records")
    cfg_arg(p)
    p.add_argument("--features", type=Path, nargs="+", required=True, help="feature JSONL from hrmcond replay")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--truth", type=Path, help="simulator truth JSON (simulate --truth): label by the planted regimes")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_train_regime)

    p = sub.add_parser(
        "evaluate-regimes", help="the regime classifier against a simulated market's planted regimes (recall, MI)"
    )
    cfg_arg(p)
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--seed", type=int, default=2024, help="simulation seed (use one the model was not trained on)")
    p.add_argument("--start", default="2024-03-04", help="first simulated day, YYYY-MM-DD")
    p.add_argument("--features", type=Path, nargs="+", help="feature JSONL of real data: report label shares too")
    p.add_argument("--out", type=Path, help="JSON report to write")
    p.add_argument("--min-recall", type=float, help="exit 2 when a truth class's recall is below this")
    p.set_defaults(fn=cmd_evaluate_regimes)

    p = sub.add_parser("build-patterns", help="point-in-time pattern library from feature records into a model")
    p.add_argument("--features", type=Path, nargs="+", required=True)
    p.add_argument("--model", type=Path, required=True, help="model directory (updated in place)")
    p.add_argument("--as-of", help="ISO time: only patterns whose outcome was known by then")
    p.set_defaults(fn=cmd_build_patterns)

    p = sub.add_parser("dataset", help="Parquet per (symbol, bar): conditioning inputs, bar tokens, forward targets")
    add_input_args(p)
    cfg_arg(p)
    p.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    p.set_defaults(fn=cmd_dataset)

    p = sub.add_parser(
        "train-conditioning", help="train the conditioning heads and FiLM with the reference HRM into a model"
    )
    cfg_arg(p)
    p.add_argument("--dataset", type=Path, nargs="+", required=True, help="Parquet from hrmcond dataset")
    p.add_argument("--model", type=Path, required=True, help="model directory (heads and FiLM updated in place)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=600)
    p.set_defaults(fn=cmd_train_conditioning)

    p = sub.add_parser("audit-leakage", help="MI(context, id) vs a block-permutation null, with a positive control")
    p.add_argument("--contexts", type=Path, required=True, help="contexts JSONL from hrmcond replay")
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_audit_leakage)

    p = sub.add_parser("report", help="one self-contained HTML page of a replayed day (charts per symbol)")
    p.add_argument("--contexts", type=Path, help="contexts JSONL (hrmcond replay --out)")
    p.add_argument("--features", type=Path, help="feature records JSONL (hrmcond replay --features-out)")
    p.add_argument("--dead-letters", type=Path, help="dead letters JSONL (default: beside --contexts)")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.set_defaults(fn=cmd_report)
    return parser


#: Commands that hand their arguments to a module's own parser (``hrmcond simulate --help`` shows them).
PASSTHROUGH = {"simulate", "zma-study"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (for log shippers): time, level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PASSTHROUGH:
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    try:
        args.fn(args)
    except HrmcondError as err:
        print(f"hrmcond {args.command}: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None


if __name__ == "__main__":
    main()
