"""The run summary counts every way a context can go out without its RAG part as fail-open."""

from __future__ import annotations

from flows.summary import summarise
from schemas.records import ConditioningFlags, ContextRecord

FLAGS = ConditioningFlags(enable_regime=True, enable_rag=True, enable_hybrid=True, fail_open=True)


def context(i: int, status: str) -> ContextRecord:
    return ContextRecord(
        symbol="AAA",
        window_end_ns=1_709_562_660_000_000_000 + i * 60 * 10**9,
        context=[0.0] * 256,
        regime="normal",
        regime_probs=[0.125] * 8,
        ssr_luld_state="NORMAL",
        rag_status=status,
        flags=FLAGS,
        model_version="m@0",
        latency=None,
    )


def test_fail_open_rate_counts_timeouts_errors_and_skipped_retrieval():
    statuses = ["ok", "empty", "timeout", "error", "unavailable", "ok", "ok", "ok"]
    report = summarise("t", 100, 1.0, [context(i, s) for i, s in enumerate(statuses)], [])
    line = next(x for x in report.splitlines() if x.startswith("fail-open rate"))
    assert "37.50%" in line  # 3 of 8
