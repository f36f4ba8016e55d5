"""The application configuration: one YAML file, validated by strict pydantic models.

Precedence: built-in defaults < YAML file < environment variables. An environment variable
``HRMCOND__SECTION__KEY=value`` overrides ``section.key`` (the value is parsed as YAML, so ``true``, ``5``
and ``[a, b]`` get their types). Unknown keys, wrong types and out-of-range values are errors that name the
key; nothing falls back to a default silently.

librdkafka settings (``kafka.librdkafka``) are secrets: they never appear in a repr, a log line or an error
message. They are strings to librdkafka, so ``HRMCOND__KAFKA__LIBRDKAFKA__SASL.PASSWORD=...`` is taken
verbatim, never parsed as YAML (where `` #`` would start a comment and ``[``, ``!``, ``: `` change meaning).
In a YAML file put them in single quotes (``sasl.password: 'p#ss: [x'``; a ``'`` inside is written ``''``).
No error message quotes a configuration line or an unknown key's value, which may be a misplaced secret:
YAML errors give the file, line, column and the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml
from pydantic import Field, SecretStr, model_validator

from conditioning.config import ConditioningConfig
from conditioning.features.pattern import PATTERN_BARS
from schemas.errors import ConfigError
from schemas.session import NO_OVERRIDES, CalendarOverrides, SessionCalendar, session_calendar
from schemas.strict import Strict, fixed_at
from schemas.ticks import WireLimits

ENV_PREFIX = "HRMCOND__"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "conditioning" / "pretrained" / "default"


class SessionConfig(Strict):
    """Which ticks count. Regular hours are the exchange calendar's sessions, 09:30-16:00 ET on trading days
    (13:00 on an early close; holidays and early closes from the maintained NYSE calendar, schemas/session.py):
    the session clock LULD and Rule 201 are defined on. Ticks outside are counted
    (``hrmcond_ticks_outside_session_total``), not processed."""

    regular_hours_only: bool = True
    #: Days the calendar library does not know (yet): unscheduled closures and extra early closes.
    overrides: CalendarOverrides = NO_OVERRIDES

    @property
    def calendar(self) -> SessionCalendar:
        """The exchange calendar amended by ``overrides`` (one shared instance per process)."""
        return session_calendar(self.overrides)


class PipelineConfig(Strict):
    #: Bar interval in event time; one context per symbol per bar.
    bar_ms: int = Field(60_000, gt=0)
    #: Trailing window over which the regime features are estimated.
    lookback_s: int = Field(1_800, gt=0)
    #: How far behind the symbol's newest tick a tick may arrive and still count; later ones are
    #: dead-lettered with reason ``late``.
    allowed_lateness_ms: int = Field(2_000, ge=0)
    #: Live, at the head of a partition the broker confirms has nothing more: event time is taken to run on
    #: with the wall clock from the newest tick, less this grace for feed delays (quiet symbols close bars).
    idle_close_ms: int = Field(5_000, ge=0)
    #: A tick further than this ahead of its clock moves it only once later ticks confirm the jump: the
    #: partition's clock (flows/clock.py: one bad timestamp cannot close every other symbol's bars) and the
    #: symbol's (held as a suspect until confirmed or refuted, reason ``future``; flows/bars.py). At least one
    #: bar, so that the replay clock (a heartbeat per bar) never holds a tick of a time-sorted file.
    max_ahead_ms: int = Field(300_000, gt=0)
    #: A symbol without a tick for this long (event time) has its state discarded (bars, features,
    #: baselines, SSR/LULD, regime smoother; snapshots too): memory holds the recently active symbols only. A
    #: symbol that returns starts afresh (warm-up included). Keep it above the longest state that matters:
    #: an SSR restriction lasts into the next session, a halt can last days. None = never.
    evict_idle_s: int | None = Field(7 * 86_400, gt=0)
    #: TSRV slow-scale K; None = data-driven ``c * n^(2/3)``.
    tsrv_k: int | None = Field(None, ge=2)
    pattern_bars: Annotated[int, fixed_at(PATTERN_BARS, "by the pattern layout (conditioning/features/pattern.py)")] = (
        PATTERN_BARS
    )
    pattern_horizon_bars: int = Field(5, ge=1)
    #: Half-life of the per-symbol level baselines in bars (conditioning/features/baseline.py).
    baseline_halflife_bars: float = Field(1_950.0, gt=0)
    #: Add matured patterns to the RAG library while running (replay: the same output for any number of
    #: workers; live: see README, "Running live"); off = the shipped library, frozen.
    rag_online_updates: bool = True
    #: Put the conditioning inputs (normalised regime features, retrieval summary) in each context record
    #: (``ContextRecord.inputs``): what ``hrmcond dataset`` trains the conditioning from. Off live by default.
    emit_conditioning_inputs: bool = False
    #: Live: after this many batches in a row whose retrieval timed out or failed, skip retrieval (no wait,
    #: status ``unavailable``) for ``rag_breaker_cooldown_ms``, then probe again (flows/breaker.py); 0 = never.
    rag_breaker_after: int = Field(3, ge=0)
    rag_breaker_cooldown_ms: int = Field(5_000, ge=0)
    session: SessionConfig = SessionConfig()
    #: Plausible prices (USD) and sizes on the wire; beyond them a tick is dead-lettered ``out_of_range``.
    wire: WireLimits = WireLimits()

    @model_validator(mode="after")
    def _windows_cover_a_bar(self) -> PipelineConfig:
        if self.lookback_s * 1000 < self.bar_ms:
            raise ValueError(f"lookback_s ({self.lookback_s} s) must cover at least one bar ({self.bar_ms} ms)")
        if self.lookback_s * 1000 % self.bar_ms:
            raise ValueError(f"lookback_s ({self.lookback_s} s) must be a whole number of bars ({self.bar_ms} ms)")
        if self.max_ahead_ms < self.bar_ms:
            raise ValueError(f"max_ahead_ms ({self.max_ahead_ms} ms) must cover at least one bar ({self.bar_ms} ms)")
        return self


class TopicsConfig(Strict):
    ticks: str = "ticks"
    contexts: str = "contexts"
    features: str | None = "features"
    dead_letter: str = "dead-letter"
    #: Partitions used when the CLI or the embedded broker creates topics.
    partitions: int = Field(3, ge=1)


class KafkaConfig(Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicsConfig = TopicsConfig()
    #: Extra librdkafka settings (SASL/SSL, timeouts...) passed through to consumers and producers.
    librdkafka: dict[str, SecretStr] = {}
    #: Live: how long the broker may hold a fetch of the ticks topic at its head (librdkafka's
    #: ``fetch.wait.max.ms``). Kafka answers a waiting fetch as soon as data arrives, so there this only sets
    #: how often an idle consumer asks; the embedded broker (Tansu) answers only when it runs out, so there it
    #: bounds the read latency (500 ms: p50 215 ms from produce to consume), and each fetch costs it CPU (four
    #: partitions tailed at 3k ticks/s: 10 ms 0.68 cores, 20 ms 0.52, 40 ms 0.37; deploy/local.yaml: 20).
    fetch_wait_max_ms: int = Field(500, ge=1)
    #: Live: a broker that has not answered for this long is reported (one warning; info when it is back).
    stall_warning_s: float = Field(5.0, gt=0)
    #: Live: ... and after this long the run ends with exit code 3 (resume it with the same --recovery-dir).
    unavailable_after_s: float = Field(60.0, gt=0)
    #: The largest message the brokers and our producers take (Kafka's and librdkafka's default
    #: ``message.max.bytes``): the dead letter of a larger message keeps the prefix of it that fits.
    max_message_bytes: int = Field(1_000_000, ge=4_096)

    def topic_names(self) -> list[str]:
        """Every topic the pipeline reads or writes (created up front: some brokers do not auto-create)."""
        t = self.topics
        return [x for x in (t.ticks, t.contexts, t.features, t.dead_letter) if x]

    def client_config(self) -> dict[str, str]:
        """The settings for a confluent-kafka client, secrets revealed (never log the result)."""
        conf = {k: v.get_secret_value() for k, v in self.librdkafka.items()}
        conf["bootstrap.servers"] = self.bootstrap_servers
        return conf


class RecoveryConfig(Strict):
    #: Bytewax recovery store; None disables recovery.
    dir: Path | None = None
    snapshot_interval_s: float = Field(10.0, gt=0)
    backup_interval_s: float = Field(0.0, ge=0)


class ModelConfig(Strict):
    #: Directory with weights, normaliser, pattern index and manifest (see conditioning/artifacts.py).
    dir: Path = DEFAULT_MODEL_DIR


class MetricsConfig(Strict):
    #: Prometheus exposition port; None disables the endpoint.
    port: int | None = Field(None, ge=1, le=65535)
    #: Address the endpoint listens on. Loopback by default: the metrics are unauthenticated, so a scraper on
    #: another host needs an interface address (or ``0.0.0.0``, every interface) chosen on purpose.
    host: str = Field("127.0.0.1", min_length=1)


class AppConfig(Strict):
    conditioning: ConditioningConfig = ConditioningConfig()
    pipeline: PipelineConfig = PipelineConfig()
    kafka: KafkaConfig = KafkaConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    model: ModelConfig = ModelConfig()
    metrics: MetricsConfig = MetricsConfig()


#: Where the secrets live: values under it are strings, taken verbatim from the environment and never shown.
SECRET_SECTION = ("kafka", "librdkafka")
#: A quoted fragment in a PyYAML problem (``'!tag'``, ``'alias'``, ``"x'y"``), as ``repr`` writes it.
_QUOTED = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")


def _yaml_problem(err: Exception) -> str:
    """``line L, column C: problem (context)`` of a YAML error, without the text PyYAML quotes: its message
    shows the offending line, and its problem may quote a tag or an alias taken from it, either of which may
    be a secret. A quoted single character (``'\\t'``) and token names (``'<stream end>'``) are kept."""

    def elide(m: re.Match[str]) -> str:
        inner = m.group(0)[1:-1]
        return m.group(0) if len(inner) <= 2 or re.fullmatch(r"<[a-z ]+>", inner) else "'...'"

    mark = getattr(err, "problem_mark", None)
    if mark is None:  # ValueError (an impossible date), or a YAMLError without a position
        return _QUOTED.sub(elide, str(err).splitlines()[0])
    context = getattr(err, "context", None)
    what = _QUOTED.sub(elide, getattr(err, "problem", None) or "syntax error") + (f" ({context})" if context else "")
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key segment (use {ENV_PREFIX}SECTION__KEY)")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another override")
        if tuple(path[:-1]) == SECRET_SECTION:
            node[path[-1]] = raw
            continue
        try:
            node[path[-1]] = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError) as err:
            raise ConfigError(f"environment variable {name}: not a YAML value: {_yaml_problem(err)}") from None
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _describe(err: pydantic.ValidationError, source: str) -> str:
    """One line per error, naming the key. The offending value is shown only where it cannot be a secret: a
    scalar given for a known key outside ``SECRET_SECTION`` (an unknown key may be a misplaced secret)."""
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        shown = (
            e["type"] not in ("missing", "extra_forbidden")
            and loc[:2] != SECRET_SECTION
            and not isinstance(e["input"], dict | list)
        )
        got = f" (got {e['input']!r})" if shown else ""
        lines.append(f"  {'.'.join(loc) or '<root>'}: {e['msg']}{got}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``HRMCOND__*`` environment overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
        except (yaml.YAMLError, ValueError) as err:  # PyYAML raises ValueError for impossible dates
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    overrides = _env_overrides(os.environ if env is None else env)
    if overrides:
        source += " + environment"
    try:
        return AppConfig.model_validate(_merge(data, overrides))
    except pydantic.ValidationError as err:
        raise ConfigError(_describe(err, source)) from None
