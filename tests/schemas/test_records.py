"""Output records: round trips, required shapes, NaN handling, dead letters keep the original bytes."""

from __future__ import annotations

import hashlib
import math

import pydantic
import pytest

from schemas.records import (
    MAX_DETAIL_CHARS,
    MAX_KEY_CHARS,
    ConditioningFlags,
    ContextRecord,
    DeadLetter,
    FeatureRecord,
    StageLatencies,
    finite_or_none,
)

FLAGS = ConditioningFlags(enable_regime=True, enable_rag=True, enable_hybrid=False, fail_open=True)


def context(**over):
    base = dict(
        symbol="AAPL",
        window_end_ns=1_514_903_460_000_000_000,
        context=[0.1] * 256,
        regime="normal",
        regime_probs=[0.125] * 8,
        ssr_luld_state="NORMAL",
        rag_status="ok",
        flags=FLAGS,
        model_version="test-1",
        latency=StageLatencies(features_ms=0.1, regime_ms=0.2, rag_ms=0.3, fusion_ms=0.1, total_ms=0.7),
    )
    return ContextRecord(**(base | over))


def test_context_round_trip_and_key():
    rec = context()
    assert ContextRecord.model_validate_json(rec.model_dump_json()) == rec
    assert rec.key == ("AAPL", 1_514_903_460_000_000_000)


@pytest.mark.parametrize(
    "over",
    [
        {"context": [0.0] * 255},
        {"regime_probs": [0.1] * 7},
        {"rag_status": "slow"},
        {"ssr_luld_state": "PAUSED"},
        {"schema_version": 2},
    ],
)
def test_context_rejects_bad_shapes(over):
    with pytest.raises(pydantic.ValidationError):
        context(**over)


def test_feature_record_nan_becomes_null():
    vec = finite_or_none([1.0, math.nan, math.inf] + [0.0] * 17)
    rec = FeatureRecord(
        symbol="XXX",
        window_start_ns=0,
        window_end_ns=1,
        n_trades=0,
        n_quotes=3,
        rv=None,
        tsrv=None,
        bpv=None,
        amihud=None,
        ssr_luld_state="HALTED",
        volume_profile=[0.1] * 10,
        spread=[None, 0.001, None],
        regime_features=vec,
        pattern=[0.0] * 128,
        flags=["few_obs"],
    )
    text = rec.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    assert FeatureRecord.model_validate_json(text).regime_features[:3] == [1.0, None, None]


def test_dead_letter_keeps_bytes():
    raw = b"\xff\x00not json"
    dl = DeadLetter.of(raw, "invalid_json", "bad", 123, topic="ticks", partition=2, offset=99, key="AAPL")
    back = DeadLetter.model_validate_json(dl.model_dump_json())
    assert back.raw == raw and back.partition == 2 and back.reason == "invalid_json"


def test_dead_letter_of_a_message_too_large_for_the_broker_keeps_a_prefix():
    raw = bytes(range(256)) * 3_000  # 768 KB: base64 makes its dead letter 1.02 MB
    dl = DeadLetter.of(raw, "invalid_json", "bad", 123, topic="ticks", partition=0, offset=7, key="AAPL")
    assert len(dl.model_dump_json()) > 1_000_000  # whole, it is more than librdkafka's default message.max.bytes
    assert not dl.truncated and dl.raw_size == len(raw) and dl.raw_sha256 == hashlib.sha256(raw).hexdigest()
    fitted = dl.fit(1_000_000)
    text = fitted.model_dump_json().encode()
    assert 999_000 < len(text) <= 1_000_000
    back = DeadLetter.model_validate_json(text)
    assert back.truncated and raw.startswith(back.raw) and len(back.raw) > 700_000
    assert (back.raw_size, back.raw_sha256, back.offset) == (len(raw), hashlib.sha256(raw).hexdigest(), 7)
    assert dl.fit(len(dl.model_dump_json())) is dl  # one that fits is kept whole


def test_dead_letter_cuts_a_hostile_key_and_detail():
    dl = DeadLetter.of(b"x", "key_mismatch", "d" * 10**6, 1, key="K" * 10**6)
    assert len(dl.key) == MAX_KEY_CHARS and len(dl.detail) == MAX_DETAIL_CHARS
    assert len(dl.fit(10_000).model_dump_json()) < 10_000
