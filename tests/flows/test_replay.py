"""``hrmcond replay``: valid, deterministic output (also across worker processes), real samples, bad files."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from schemas.records import ContextRecord, DeadLetter, FeatureRecord

CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "local.yaml")  # every conditioning path on


def replay(tmp_path, name, *args):
    out = tmp_path / name / "ctx.jsonl"
    feats = tmp_path / name / "feat.jsonl"
    main(["replay", "--config", CONFIG, *args, "--out", str(out), "--features-out", str(feats)])
    return out, feats


def read(path, model):
    return [model.model_validate_json(line) for line in path.read_bytes().splitlines()]


@pytest.mark.shared_data
def test_replay_real_taq_is_valid_and_byte_identical(tmp_path, taq_sample_args):
    args = taq_sample_args
    out1, feat1 = replay(tmp_path, "a", *args)
    out2, feat2 = replay(tmp_path, "b", *args)
    assert out1.read_bytes() == out2.read_bytes() and feat1.read_bytes() == feat2.read_bytes()
    contexts, features = read(out1, ContextRecord), read(feat1, FeatureRecord)
    # one bar per minute of two regular sessions, every one of which has trades
    assert len(contexts) == len(features) == 2 * 390
    assert len({c.key for c in contexts}) == len(contexts)
    assert all(len(c.context) == 256 and c.latency is None for c in contexts)
    assert [c.key for c in contexts] == sorted(c.key for c in contexts)  # ordered by (window_end, symbol)
    assert {c.regime for c in contexts} <= set(
        ["low_vol", "high_vol", "trending", "mean_reverting", "ssr_active", "luld_active", "illiquid", "normal"]
    )


@pytest.mark.shared_data
def test_replay_real_lobster(tmp_path, shared_data):
    out, feats = replay(
        tmp_path, "l", "--format", "lobster", "--lobster", str(shared_data / "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip")
    )
    contexts = read(out, ContextRecord)
    assert {c.symbol for c in contexts} == {"AAPL"} and len(contexts) == 390
    assert sum(f.n_trades > 0 for f in read(feats, FeatureRecord)) == 390


def test_one_sided_quote_row_becomes_a_dead_letter_naming_the_row(tmp_path):
    ticks = tmp_path / "t.csv"
    ticks.write_text(
        "ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n"
        "1514903400000000000,AAA,trade,10.0,100,,,,\n"
        "1514903401000000000,AAA,quote,,,,,10.02,300\n"
        "1514903402000000000,AAA,trade,10.01,100,,,,\n"
    )
    out, _ = replay(tmp_path, "o", "--format", "canonical", "--ticks", str(ticks))
    (dead,) = read(out.with_name("ctx.dead-letters.jsonl"), DeadLetter)
    assert dead.reason == "invalid_value" and dead.source == f"{ticks}:row 1" and "bid" in dead.detail
    assert len(read(out, ContextRecord)) == 1  # the rest went through


def test_rows_outside_the_wire_limits_become_dead_letters(tmp_path, monkeypatch):
    ticks, reference = tmp_path / "t.csv", tmp_path / "r.csv"
    ticks.write_text(
        "ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n"
        "1514903400000000000,AAA,trade,10.0,100,,,,\n"
        "1514903401000000000,AAA,trade,1e-300,100,,,,\n"
        "1514903402000000000,AAA,trade,50.0,100,,,,\n"
        "1514903403000000000,AAA,trade,10.01,100,,,,\n"
    )
    reference.write_text("symbol,date,prev_close,tier\nAAA,2018-01-02,10.0,1\nBBB,2018-01-02,1e-9,1\n")

    def run(name: str, min_price: float, max_price: float) -> tuple[list[DeadLetter], list[ContextRecord]]:
        monkeypatch.setenv("HRMCOND__PIPELINE__WIRE__MIN_PRICE", str(min_price))  # the limits are configurable
        monkeypatch.setenv("HRMCOND__PIPELINE__WIRE__MAX_PRICE", str(max_price))
        out, _ = replay(tmp_path, name, "--format", "canonical", "--ticks", str(ticks), "--reference", str(reference))
        return read(out.with_name("ctx.dead-letters.jsonl"), DeadLetter), read(out, ContextRecord)

    # the file formats take every row (positive, finite): without the limits a sale at 1e-300 USD is SSR
    dead, (ctx,) = run("loose", 1e-301, 1e7)
    assert dead == [] and ctx.ssr_luld_state == "SSR_ACTIVE"
    dead, (ctx,) = run("strict", 1e-4, 20)
    assert sorted(d.source for d in dead) == sorted([f"{ticks}:row 1", f"{ticks}:row 2", "reference BBB 2018-01-02"])
    assert all(d.reason == "out_of_range" and "pipeline.wire" in d.detail for d in dead)
    assert ctx.ssr_luld_state == "NORMAL"


def test_features_only_replay_does_not_import_torch(tmp_path):
    # --features-out needs no model: the process must not pay torch's start-up (seconds of CPU).
    ticks = tmp_path / "t.csv"
    ticks.write_text(
        "ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n"
        "1514903400000000000,AAA,trade,10.0,100,,,,\n"
        "1514903402000000000,AAA,trade,10.01,100,,,,\n"
    )
    feats = tmp_path / "f.jsonl"
    args = ["replay", "--config", CONFIG, "--format", "canonical", "--ticks", str(ticks), "--features-out", str(feats)]
    probe = f"import sys; from flows.cli import main; main({args!r}); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], check=True, timeout=120, capture_output=True, text=True)
    assert len(read(feats, FeatureRecord)) == 1  # the replay ran
    assert done.stdout.splitlines()[-1] == "False"


def test_replay_two_processes_byte_identical(tmp_path, sim_files, capsys):
    # With the online pattern library on (deploy/local.yaml): the patterns the replay matures change the
    # answers of later queries, so this also checks that they join the library at the same points.
    ticks, ref, _ = sim_files
    args = ["--format", "canonical", "--ticks", str(ticks), "--reference", str(ref)]
    out1, feat1 = replay(tmp_path, "one", *args)
    summary_of_one = capsys.readouterr().out
    out2 = tmp_path / "two" / "ctx.jsonl"
    feat2 = tmp_path / "two" / "feat.jsonl"
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "replay",
            "--config",
            CONFIG,
            *args,
            "--processes",
            "2",
            "--out",
            str(out2),
            "--features-out",
            str(feat2),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    # the parent reports the input's size, taken from worker 0, and leaves only the outputs behind
    size = re.compile(r"ticks in\s+([\d,]+)")
    assert size.search(summary_of_one)[1] == size.search(two.stdout)[1]
    assert sorted(p.name for p in out2.parent.iterdir()) == ["ctx.dead-letters.jsonl", "ctx.jsonl", "feat.jsonl"]
    assert out1.read_bytes() == out2.read_bytes()
    assert feat1.read_bytes() == feat2.read_bytes()
    contexts = read(out1, ContextRecord)
    assert len({c.symbol for c in contexts}) == 6
    # the staged scenarios come through: SSR on symbol 0, a LULD pause (HALTED) on symbol 1
    assert any(c.symbol == "SIM00000" and c.ssr_luld_state == "SSR_ACTIVE" for c in contexts)
    assert any(c.symbol == "SIM00001" and c.ssr_luld_state == "HALTED" for c in contexts)


def test_replay_rejects_a_bad_file_naming_the_row(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n"
        "1514903400000000000,AAA,trade,10.0,100,,,,\n"
        "1514903401000000000,AAA,trade,-3.0,100,,,,\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["replay", "--format", "canonical", "--ticks", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "price" in err and "-3" in err


def test_replay_needs_its_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["replay", "--format", "taq", "--out", str(tmp_path / "o.jsonl")])
    assert info.value.code == 2 and "--trades" in capsys.readouterr().err


def test_producer_refuses_a_row_the_wire_format_cannot_carry(tmp_path):
    from flows.producer import table_ticks
    from schemas.canonical import read_ticks
    from schemas.errors import HrmcondError
    from schemas.reference import ReferenceRow

    ticks = tmp_path / "t.csv"
    ticks.write_text(
        "ts_ns,symbol,kind,price,size,bid,bid_size,ask,ask_size\n"
        "1514903400000000000,AAA,trade,10.0,100,,,,\n"
        "1514903401000000000,AAA,quote,,,,,10.02,300\n"
    )
    produced = table_ticks(read_ticks(ticks))
    assert next(produced).kind == "trade"
    with pytest.raises(HrmcondError, match="row 1"):
        next(produced)
    tiny = ReferenceRow("AAA", dt.date(2018, 1, 2), 1e-9, 1)  # a prior close outside pipeline.wire
    with pytest.raises(HrmcondError, match="reference AAA 2018-01-02"):
        next(table_ticks(read_ticks(ticks), [tiny]))


def test_replay_refuses_an_unsorted_table(tmp_path, sim_files):
    from flows.config import load_config
    from flows.replay import ReplayOutputs, build_replay_flow

    _, _, market = sim_files
    ts = market.ticks.column("ts_ns").to_numpy()
    i = int(np.flatnonzero(np.diff(ts) > 0)[0])  # rows i and i + 1 have distinct times: swap them
    order = list(range(market.ticks.num_rows))
    order[i], order[i + 1] = i + 1, i
    swapped = market.ticks.take(order)
    with pytest.raises(ValueError, match=f"row {i + 1} is earlier"):
        build_replay_flow(
            load_config(CONFIG, env={}), swapped, market.reference, ReplayOutputs(None, tmp_path / "f.jsonl")
        )
