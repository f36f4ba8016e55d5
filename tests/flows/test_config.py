"""Configuration: the spec's block verbatim, strict keys, env overrides, clear errors, secrets hidden."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.config import AppConfig, load_config
from schemas.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

SPEC_BLOCK = textwrap.dedent(
    """
    conditioning:
      enable_regime: false
      enable_rag: false
      enable_hybrid: false
      fail_open: true
      regime: {num_regimes: 8, stability_threshold: 0.05}
      rag: {pattern_dim: 128, timeout_ms: 60, max_patterns: 10000}
      film: {context_dim: 256, target_dim: 512}
    """
)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_spec_block_is_accepted_verbatim(tmp_path):
    cfg = load_config(write(tmp_path, SPEC_BLOCK), env={})
    c = cfg.conditioning
    assert (c.enable_regime, c.enable_rag, c.enable_hybrid, c.fail_open) == (False, False, False, True)
    assert (c.regime.num_regimes, c.regime.stability_threshold) == (8, 0.05)
    assert (c.rag.pattern_dim, c.rag.timeout_ms, c.rag.max_patterns) == (128, 60, 10000)
    assert (c.film.context_dim, c.film.target_dim) == (256, 512)


@pytest.mark.parametrize("path", sorted((REPO / "deploy").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path, env={}), AppConfig)


@pytest.mark.parametrize(
    "text,key",
    [
        ("conditioning: {enable_rgime: true}", "conditioning.enable_rgime"),
        ("pipeline: {bar_ms: -1}", "pipeline.bar_ms"),
        ("pipeline: {bar_ms: soon}", "pipeline.bar_ms"),
        ("conditioning: {rag: {timeout_ms: 0}}", "conditioning.rag.timeout_ms"),
        ("kafka: {topics: {tick: x}}", "kafka.topics.tick"),
        ("pipeline: {lookback_s: 1, bar_ms: 60000}", "pipeline"),
        ("pipeline: {wire: {max_price: -1}}", "pipeline.wire.max_price"),
        ("pipeline: {wire: {min_price: 10, max_price: 1}}", "pipeline.wire"),
        ("pipeline: {session: {holidays: [2018-13-01]}}", "not valid YAML"),
        ("pipeline: {session: {holidays: [yesterday]}}", "pipeline.session.holidays"),
        ("nonsense: 1", "nonsense"),
    ],
)
def test_wrong_key_type_value_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text), env={})


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", env={})


def test_environment_overrides_file(tmp_path):
    env = {"HRMCOND__PIPELINE__BAR_MS": "1000", "HRMCOND__CONDITIONING__ENABLE_RAG": "true", "OTHER": "x"}
    cfg = load_config(write(tmp_path, "pipeline: {bar_ms: 5000}\n"), env=env)
    assert cfg.pipeline.bar_ms == 1000 and cfg.conditioning.enable_rag is True
    with pytest.raises(ConfigError, match="pipeline.bar_mss"):
        load_config(None, env={"HRMCOND__PIPELINE__BAR_MSS": "1"})


def test_librdkafka_secrets_never_printed(tmp_path):
    text = "kafka: {librdkafka: {sasl.password: hunter2, security.protocol: SASL_SSL}}\n"
    cfg = load_config(write(tmp_path, text), env={})
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    assert cfg.kafka.client_config()["sasl.password"] == "hunter2"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "kafka: {librdkafka: {sasl.password: [hunter2]}}\n"), env={})
    assert "hunter2" not in str(info.value)


def test_fingerprint_tracks_model_relevant_config():
    a, b = load_config(None, env={}), load_config(None, env={"HRMCOND__PIPELINE__BAR_MS": "1000"})
    c = load_config(None, env={"HRMCOND__KAFKA__BOOTSTRAP_SERVERS": "elsewhere:9092"})
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == c.fingerprint()
