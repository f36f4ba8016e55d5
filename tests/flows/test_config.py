"""Configuration: the spec's block verbatim, strict keys, env overrides, clear errors, secrets hidden."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from flows.config import AppConfig, load_config
from schemas.errors import ConfigError
from schemas.session import XNYS, CalendarOverrides, new_york_ns, regular_session

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
        ("pipeline: {session: {overrides: {closed: [2018-13-01]}}}", "not valid YAML"),
        ("pipeline: {session: {overrides: {closed: [yesterday]}}}", "pipeline.session.overrides.closed"),
        ("pipeline: {session: {overrides: {early_closes: [2024-03-09]}}}", "pipeline.session.overrides"),
        ("pipeline: {session: {holidays: [2024-03-12]}}", "pipeline.session.holidays"),
        ("nonsense: 1", "nonsense"),
        # Values that look adjustable but that the layout or the model fixes: rejected at load, not later.
        ("conditioning: {regime: {num_regimes: 4}}", "conditioning.regime.num_regimes"),
        ("conditioning: {rag: {pattern_dim: 64}}", "conditioning.rag.pattern_dim"),
        ("conditioning: {film: {context_dim: 128}}", "conditioning.film.context_dim"),
        ("pipeline: {pattern_bars: 16}", "pipeline.pattern_bars"),
        ("pipeline: {tsrv_k: 1}", "pipeline.tsrv_k"),
        ("pipeline: {lookback_s: 90, bar_ms: 60000}", "pipeline"),
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


# -- secrets: never shown, never mangled (issue 9) ---------------------------------------------------------
#: YAML specials: unquoted, ``: `` and ``[`` break the parse, ``!`` starts a tag, `` #`` starts a comment.
SECRETS = ["p#ss: [Zq9!SeCrEt", "Zq9SeCrEt #tail", "!SeCrEt'q\"x"]
MARK = "SeCrEt"  # in every secret; no output may hold it, nor a fragment of a secret around it


def single_quoted(secret: str) -> str:
    """How README tells users to write a secret in YAML: in single quotes, a ``'`` inside doubled."""
    return "'" + secret.replace("'", "''") + "'"


def password_file(value: str) -> str:
    """A config file setting ``kafka.librdkafka.sasl.password`` to ``value`` as written (on line 3)."""
    return f"kafka:\n  librdkafka:\n    sasl.password: {value}\n"


def said(err: BaseException) -> str:
    """Everything a traceback of ``err`` would print: message, repr, chained causes."""
    import traceback

    return "".join(traceback.format_exception(err)) + repr(err)


def assert_hidden(cfg: AppConfig) -> None:
    for text in (repr(cfg), str(cfg), str(cfg.model_dump()), cfg.model_dump_json(), repr(cfg.kafka.librdkafka)):
        assert MARK not in text


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_from_the_environment_is_taken_verbatim(secret):
    import yaml

    # As a YAML value the secret would be refused, truncated at " #" or read as a tag (the old parse).
    try:
        assert yaml.safe_load(secret) != secret
    except yaml.YAMLError:
        pass
    cfg = load_config(None, env={"HRMCOND__KAFKA__LIBRDKAFKA__SASL.PASSWORD": secret})
    assert cfg.kafka.client_config()["sasl.password"] == secret
    assert_hidden(cfg)


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_from_a_yaml_file_single_quoted(tmp_path, secret):
    path = write(tmp_path, password_file(single_quoted(secret)))
    assert MARK in path.read_text()
    cfg = load_config(path, env={})
    assert cfg.kafka.client_config()["sasl.password"] == secret
    assert_hidden(cfg)


QUOTED_SECRET = password_file(single_quoted(SECRETS[0]))


@pytest.mark.parametrize(
    "text,env,expect",
    [
        # A secret, unquoted: a YAML syntax error on the secret's own line (PyYAML's message shows that line).
        (password_file(SECRETS[0]), {}, r"c\.yaml is not valid YAML: line 3, column 24"),
        # Unquoted, starting with '!': a tag, which PyYAML's message quotes.
        (password_file("!SeCrEt"), {}, r"line 3, column 20: could not determine a constructor"),
        # Quoted properly, with a syntax error elsewhere in the same file.
        (QUOTED_SECRET + "pipeline: {bar_ms: [1}\n", {}, r"not valid YAML: line 4, column 22"),
        # Quoted properly, with a validation error elsewhere in the same file.
        (QUOTED_SECRET + "pipeline: {bar_ms: soon}\n", {}, r"pipeline\.bar_ms: .*\(got 'soon'\)"),
        # Under a misspelt key: an unknown key's value is not shown (it may be a secret).
        ("kafka: {sasl.password: 'Zq9SeCrEt'}\n", {}, r"kafka\.sasl\.password: Extra inputs"),
        # Of a wrong type: a librdkafka value is never shown.
        ("kafka: {librdkafka: {sasl.password: [Zq9SeCrEt]}}\n", {}, r"kafka\.librdkafka\.sasl\.password"),
        # Through the environment, under a key outside kafka.librdkafka: parsed as YAML, and unparsable.
        (
            None,
            {"HRMCOND__KAFKA__SASL_PASSWORD": SECRETS[0]},
            r"HRMCOND__KAFKA__SASL_PASSWORD: not a YAML value: line 1, column 18",
        ),
        (None, {"HRMCOND__KAFKA__SASL_PASSWORD": SECRETS[1].split()[0]}, r"kafka\.sasl_password: Extra inputs"),
    ],
    ids=[
        "unquoted",
        "tag",
        "syntax-elsewhere",
        "invalid-elsewhere",
        "unknown-key",
        "wrong-type",
        "env-unparsable",
        "env-unknown-key",
    ],
)
def test_no_error_shows_a_secret(tmp_path, text, env, expect):
    path = None if text is None else write(tmp_path, text)
    assert MARK in (text or "") + "".join(env.values())
    with pytest.raises(ConfigError, match=expect) as info:
        load_config(path, env=env)
    assert MARK not in said(info.value)


def test_cli_config_error_shows_no_secret(tmp_path, capsys):
    from flows.cli import main

    path = write(tmp_path, password_file(SECRETS[0]))
    with pytest.raises(SystemExit) as exit_:
        main(["produce", "--config", str(path), "--format", "canonical", "--ticks", str(tmp_path / "t.csv")])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "c.yaml is not valid YAML: line 3" in err
    assert MARK not in out + err


def test_calendar_overrides_reach_the_session_clock(tmp_path):
    text = "pipeline: {session: {overrides: {closed: [2024-03-12], early_closes: [2024-03-13]}}}"
    calendar = load_config(write(tmp_path, text), env={}).pipeline.session.calendar
    assert calendar.overrides == CalendarOverrides(closed=(dt.date(2024, 3, 12),), early_closes=(dt.date(2024, 3, 13),))
    # 11:00 EDT on the closure, 14:00 EDT after the extra early close: open on the library's own calendar
    for ts in (new_york_ns(dt.date(2024, 3, 12), dt.time(11)), new_york_ns(dt.date(2024, 3, 13), dt.time(14))):
        assert regular_session(ts) and not regular_session(ts, calendar)
    assert load_config(None, env={}).pipeline.session.calendar is XNYS
