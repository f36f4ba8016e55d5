"""The training CLI in-process (``flows.cli.main``): train-regime, build-patterns, audit-leakage (issue 4).

Small data: two simulated days of three symbols, replayed features-only through the dataflow (what
``hrmcond replay --features-out`` writes). The model directory the commands write must load with
``load_model`` (manifest checked), a tampered or mismatching one must be refused naming the field, and
audit-leakage must exit 0 on output that carries no id and 1 on output that does.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest

from conditioning.artifacts import ArtifactMismatchError, load_model
from conditioning.config import ConditioningConfig, FilmConfig
from conditioning.datasets import feature_table, features_of_ticks, read_feature_records
from conditioning.labels import PLANTED
from conditioning.regime import REGIME_NAMES
from conditioning.sim.market import MarketConfig, simulate_market, write_truth
from flows.cli import main
from flows.config import load_config
from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
from flows.runner import run_process
from schemas.records import ConditioningFlags, ContextRecord

BAR_NS = 60_000_000_000


MARKET = MarketConfig(n_symbols=3, n_days=2, seed=5, start=dt.date(2024, 2, 5))


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    market = simulate_market(MARKET)
    out = tmp_path_factory.mktemp("feat")
    outputs = ReplayOutputs(contexts=None, features=out / "features.jsonl")
    run_process(build_replay_flow(load_config(env={}), market.ticks, market.reference, outputs))
    finish_replay(outputs)
    write_truth(market, out / "truth.json")
    return outputs.features


@pytest.fixture(scope="module")
def model_dir(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    main(["train-regime", "--features", str(features), "--out", str(out), "--epochs", "10", "--seed", "0"])
    return out


def test_train_regime_writes_a_loadable_model(features, model_dir, capsys) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    loaded = load_model(model_dir)
    assert loaded.manifest == manifest
    assert manifest["parameter_counts"]["total"] == sum(p.numel() for p in loaded.system.parameters())
    extra = manifest["extra"]
    assert 0.0 <= extra["accuracy"] <= 1.0 and len(extra["confusion"]) == len(REGIME_NAMES)
    assert sum(map(sum, extra["confusion"])) > 0  # a held-out split was evaluated
    # The classifier was trained, not left at its initialisation: it fits the evidence-rule labels above chance.
    assert extra["kappa"] > 0.2, extra["kappa"]
    # The saved normaliser is the one fitted on these features: their regime vectors come out ~standardised.
    raw = feature_table(read_feature_records([features])).raw
    x = loaded.normalizer.transform(raw[np.isfinite(raw).all(axis=1)])
    assert np.all(np.isfinite(x))
    assert loaded.system.pattern_rag.size == 0  # no library before build-patterns


def test_train_regime_on_the_simulator_truth(features, tmp_path, capsys) -> None:
    out = tmp_path / "truth_model"
    truth = features.parent / "truth.json"
    main(["train-regime", "--features", str(features), "--truth", str(truth), "--out", str(out), "--epochs", "5"])
    labels = load_model(out).manifest["extra"]["labels"]
    assert labels["source"] == "simulator truth" and labels["truth"] == "truth.json"
    # Every planted regime got labelled bars; the scripted SSR/LULD episodes too (day one of symbols 0 and 1).
    for regime in (*PLANTED.values(), "ssr_active", "luld_active"):
        assert labels["shares"][regime] > 0, regime
    assert "labels from simulator truth" in capsys.readouterr().out


def test_features_of_ticks_match_the_dataflow(features) -> None:
    """The evaluation's in-process features (conditioning.datasets.features_of_ticks) are the dataflow's: the
    same bars, the same 20-d vectors and patterns."""
    market = simulate_market(MARKET)
    flow = feature_table(read_feature_records([features]))
    own = features_of_ticks(market.ticks, market.reference)
    assert list(zip(own.symbol, own.window_end_ns, strict=True)) == list(
        zip(flow.symbol, flow.window_end_ns, strict=True)
    )
    np.testing.assert_allclose(own.raw, flow.raw, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(own.pattern, flow.pattern)


def test_build_patterns_fills_the_library_point_in_time(features, model_dir, tmp_path, capsys) -> None:
    table = feature_table(read_feature_records([features]))
    assert len(table.patterns) > 100
    main(["build-patterns", "--features", str(features), "--model", str(model_dir)])
    loaded = load_model(model_dir)
    assert loaded.system.pattern_rag.size == len(table.patterns)
    assert loaded.manifest["extra"]["pattern_library"]["patterns_kept"] == len(table.patterns)
    assert "accuracy" in loaded.manifest["extra"]  # the training summary survives the rewrite

    # --as-of keeps only patterns whose outcome was known by then (here: the first day's).
    as_of_ns = int(np.median([p.outcome_end_ns for p in table.patterns]))
    as_of = dt.datetime.fromtimestamp(as_of_ns / 1e9, tz=dt.UTC)
    known = sum(p.outcome_end_ns <= int(as_of.timestamp() * 1e9) for p in table.patterns)
    copy = tmp_path / "asof"
    shutil.copytree(model_dir, copy)
    main(["build-patterns", "--features", str(features), "--model", str(copy), "--as-of", as_of.isoformat()])
    rebuilt = load_model(copy)
    # The copy's library held every pattern: the --as-of rebuild replaces it, it does not append to it.
    assert rebuilt.system.pattern_rag.size == known < len(table.patterns)
    assert rebuilt.manifest["extra"]["pattern_library"]["patterns_kept"] == known
    lib = rebuilt.system.pattern_rag
    assert lib._outcome_end_ns[: lib.size].max() <= as_of_ns

    # Building twice gives the same library, not every pattern twice.
    main(["build-patterns", "--features", str(features), "--model", str(model_dir)])
    assert load_model(model_dir).system.pattern_rag.size == len(table.patterns)


def test_a_mismatching_model_is_refused_naming_the_field(model_dir, tmp_path, features, capsys) -> None:
    other = ConditioningConfig(film=FilmConfig(target_dim=256))
    with pytest.raises(ArtifactMismatchError, match="config_hash.*load with the config the model was trained"):
        load_model(model_dir, other)

    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["feature_layout_version"] += 1
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatchError, match="feature_layout_version.*retrain"):
        load_model(tampered)
    # Through the CLI too: one line naming the field, exit code 2.
    with pytest.raises(SystemExit) as err:
        main(["build-patterns", "--features", str(features), "--model", str(tampered)])
    assert err.value.code == 2
    assert "feature_layout_version" in capsys.readouterr().err


def write_contexts(path, contexts: np.ndarray, regimes: np.ndarray, symbols: list[str], days: int, bars: int):
    """Context records for ``symbols x days x bars`` rows (row-major), one trading day per 'day'."""
    flags = ConditioningFlags(enable_regime=True, enable_rag=True, enable_hybrid=True, fail_open=True)
    open_ns = int(dt.datetime(2024, 3, 4, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)
    with open(path, "w") as f:
        i = 0
        for s in symbols:
            for d in range(days):
                for b in range(bars):
                    f.write(
                        ContextRecord(
                            symbol=s,
                            window_end_ns=open_ns + d * 86_400 * 10**9 + (b + 1) * BAR_NS,
                            context=contexts[i].tolist(),
                            regime=REGIME_NAMES[regimes[i]],
                            regime_probs=None,
                            ssr_luld_state="NORMAL",
                            rag_status="ok",
                            flags=flags,
                            model_version="test@0",
                        ).model_dump_json()
                        + "\n"
                    )
                    i += 1


@pytest.mark.parametrize("leaky", [False, True])
def test_audit_leakage_exit_status(tmp_path, capsys, leaky) -> None:
    symbols, days, bars = [f"S{i}" for i in range(4)], 4, 40
    n = len(symbols) * days * bars
    rng = np.random.default_rng(3)
    contexts = rng.standard_normal((n, 256)).astype(np.float32)  # [N, 256], independent of the symbol
    regimes = rng.integers(0, len(REGIME_NAMES), n)
    if leaky:  # each symbol's contexts sit around its own centre, and its regime is its index
        sym = np.repeat(np.arange(len(symbols)), days * bars)
        contexts += 4.0 * rng.standard_normal((len(symbols), 256)).astype(np.float32)[sym]
        regimes = sym
    path = tmp_path / "contexts.jsonl"
    write_contexts(path, contexts, regimes, symbols, days, bars)
    argv = ["audit-leakage", "--contexts", str(path), "--permutations", "100"]
    if leaky:
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 1
        assert "audit FAILED" in capsys.readouterr().out
    else:
        main(argv)  # returns: exit status 0
        out = capsys.readouterr().out
        assert "audit passed" in out and "LEAK" not in out and "MISSED" not in out, out
