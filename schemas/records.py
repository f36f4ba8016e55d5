"""Output wire formats: per-bar feature records, conditioning context records and dead letters.

All three are JSON objects (one per Kafka message or JSONL line). Undefined numbers (too few observations)
are ``null``, never NaN, so every record is valid JSON for any consumer.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from typing import Annotated, Final, Literal, get_args

from pydantic import Field

from schemas.layout import (
    CONTEXT_DIM,
    FEATURE_LAYOUT_VERSION,
    NUM_REGIMES,
    OUTCOME_DIM,
    PATTERN_DIM,
    REGIME_FEATURE_DIM,
    SsrLuldState,
)
from schemas.strict import Strict

RECORD_SCHEMA_VERSION: Final = 1

SsrLuldName = Literal["NORMAL", "SSR_ACTIVE", "LULD_LIMIT", "HALTED"]
assert set(get_args(SsrLuldName)) == {s.name for s in SsrLuldState}
RagStatus = Literal["ok", "timeout", "disabled", "empty", "error", "unavailable"]
#: Statuses whose context went out without the RAG part because retrieval did not answer (fail-open).
FAILED_OPEN: frozenset[RagStatus] = frozenset({"timeout", "error", "unavailable"})
OptFloat = float | None


def finite_or_none(values: Iterable[float]) -> list[float | None]:
    """NaN/inf -> None, so the JSON carries ``null`` instead of a non-standard token."""
    return [float(v) if math.isfinite(v) else None for v in values]


class _Record(Strict):
    schema_version: Literal[1] = RECORD_SCHEMA_VERSION


class MaturedPattern(Strict):
    """The outcome of an earlier bar's pattern, known as of this bar (point in time): the pattern vector is
    the ``pattern`` of this symbol's feature record with ``window_end_ns == end_ns``."""

    start_ns: int
    end_ns: int
    outcome_end_ns: int
    #: ``schemas.layout.OUTCOME_NAMES``: forward log return, forward log realised variance.
    outcome: Annotated[list[float], Field(min_length=OUTCOME_DIM, max_length=OUTCOME_DIM)]


class FeatureRecord(_Record):
    """One per symbol per bar: the window features behind a context (also the training data)."""

    symbol: str
    window_start_ns: int
    window_end_ns: int
    n_trades: int = Field(ge=0)
    n_quotes: int = Field(ge=0)
    rv: OptFloat
    tsrv: OptFloat
    bpv: OptFloat
    amihud: OptFloat
    ssr_luld_state: SsrLuldName
    volume_profile: Annotated[list[OptFloat], Field(min_length=10, max_length=10)]
    spread: Annotated[list[OptFloat], Field(min_length=3, max_length=3)]
    #: The 20-d regime features before normalisation, layout ``schemas.layout.REGIME_FEATURE_NAMES``
    #: (level features as log ratios to the symbol's trailing baseline; the raw levels are the fields above).
    regime_features: Annotated[list[OptFloat], Field(min_length=REGIME_FEATURE_DIM, max_length=REGIME_FEATURE_DIM)]
    pattern: Annotated[list[float], Field(min_length=PATTERN_DIM, max_length=PATTERN_DIM)]
    #: Patterns whose outcome became known at this bar (what ``hrmcond build-patterns`` learns from).
    matured: list[MaturedPattern] = []
    flags: list[str] = []
    feature_layout_version: int = FEATURE_LAYOUT_VERSION


class ConditioningFlags(Strict):
    enable_regime: bool
    enable_rag: bool
    enable_hybrid: bool
    fail_open: bool


class StageLatencies(Strict):
    """Wall-clock milliseconds spent per stage for this record's batch (live runs only)."""

    features_ms: float
    regime_ms: float
    rag_ms: float
    fusion_ms: float
    total_ms: float
    #: Event time of the bar end to emission, in ms; the end-to-end staleness a consumer sees.
    bar_to_emit_ms: float | None = None


#: Width of the retrieval summary the RAG head reads (conditioning/rag.py): weighted mean and std of the
#: neighbours' standardised outcomes, max and mean similarity.
RAG_SUMMARY_DIM = 2 * OUTCOME_DIM + 2


class ConditioningInputs(Strict):
    """What the conditioning system read for one context (``pipeline.emit_conditioning_inputs``): with the
    feature record's ``pattern`` and the context's ``regime_probs``, the inputs a trainer needs to reproduce
    the context exactly (conditioning/system.py ``fuse``), so the heads train on what they see live."""

    #: The 20-d regime features after the model's normaliser (the classifier's input).
    regime_features: Annotated[list[float], Field(min_length=REGIME_FEATURE_DIM, max_length=REGIME_FEATURE_DIM)]
    #: The retrieval summary, None when the row's RAG part is absent (``rag_status`` says why).
    rag_summary: Annotated[list[float], Field(min_length=RAG_SUMMARY_DIM, max_length=RAG_SUMMARY_DIM)] | None


class ContextRecord(_Record):
    """The pipeline's output: the 256-d conditioning context for one symbol at one bar close.

    ``(symbol, window_end_ns)`` is the idempotency key: delivery is at-least-once, consumers keep the
    first record per key (later duplicates are byte-identical apart from ``latency``).
    """

    symbol: str
    window_end_ns: int
    context: Annotated[list[float], Field(min_length=CONTEXT_DIM, max_length=CONTEXT_DIM)]
    regime: str | None
    regime_probs: Annotated[list[float], Field(min_length=NUM_REGIMES, max_length=NUM_REGIMES)] | None
    ssr_luld_state: SsrLuldName
    rag_status: RagStatus
    flags: ConditioningFlags
    model_version: str
    #: None in deterministic replay output (latencies differ run to run).
    latency: StageLatencies | None = None
    #: The conditioning inputs behind ``context``; only with ``pipeline.emit_conditioning_inputs``.
    inputs: ConditioningInputs | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.symbol, self.window_end_ns)


#: A dead letter's ``key`` and ``detail`` are cut to these many characters: both can echo a hostile message
#: (a key, or an unknown field's name, of a megabyte), and a dead letter must always fit the broker.
MAX_KEY_CHARS = 256
MAX_DETAIL_CHARS = 2_000


class DeadLetter(_Record):
    """An input that could not be processed, with the reason: nothing is dropped silently.

    The original bytes are kept whole unless the dead letter would then be too large for the broker
    (:meth:`fit`): it keeps their first bytes, and ``raw_size`` and ``raw_sha256`` still describe the whole
    message, so it can be matched with the original at its topic/partition/offset.
    """

    reason: str
    detail: str
    #: The original message bytes, base64; only their first bytes where :attr:`truncated`.
    raw_b64: str
    #: Size in bytes and SHA-256 (hex) of the whole original message.
    raw_size: int = Field(ge=0)
    raw_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    key: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    #: Where it came from when not Kafka (a replay file), e.g. ``ticks.csv:1234``.
    source: str | None = None
    received_at_ns: int

    @classmethod
    def of(
        cls, raw: bytes, reason: str, detail: str, received_at_ns: int, *, key: str | None = None, **where: object
    ) -> DeadLetter:
        return cls(
            raw_b64=base64.b64encode(raw).decode(),
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
            reason=reason,
            detail=detail[:MAX_DETAIL_CHARS],
            key=None if key is None else key[:MAX_KEY_CHARS],
            received_at_ns=received_at_ns,
            **where,
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.raw_size

    def fit(self, max_bytes: int) -> DeadLetter:
        """This dead letter, or, if its JSON is longer than ``max_bytes``, a copy that keeps only as many of the
        original bytes as fit (base64 takes 4 characters per 3 bytes)."""
        size = len(self.model_dump_json().encode())
        if size <= max_bytes:
            return self
        keep = max(0, (max_bytes - (size - len(self.raw_b64))) // 4 * 3)
        return self.model_copy(update={"raw_b64": base64.b64encode(self.raw[:keep]).decode()})
