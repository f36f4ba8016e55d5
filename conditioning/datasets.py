"""Training data from replayed history: feature-record JSON Lines -> arrays, patterns and trend scores.

The records come from ``hrmcond replay --features-out`` (the dataflow's own feature path), so a model is
trained on exactly what it will see live.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conditioning.features.pattern import N_CHANNELS, PATTERN_BARS
from conditioning.features.types import Pattern
from schemas.records import FeatureRecord
from schemas.session import trading_date


@dataclass(frozen=True)
class FeatureTable:
    """Feature records as arrays, rows in (window_end_ns, symbol) order."""

    symbol: np.ndarray  # [N] str
    window_end_ns: np.ndarray  # [N] int64
    raw: np.ndarray  # [N, 20] float64, NaN where undefined
    pattern: np.ndarray  # [N, 128] float32
    patterns: list[Pattern]  # matured patterns, vectors joined from their own bar's record

    def __len__(self) -> int:
        return len(self.symbol)

    @property
    def episode(self) -> np.ndarray:
        """Episode id per row: symbol and New York trading date (what leakage audits treat as a 'puzzle')."""
        return np.array([f"{s}@{trading_date(int(t))}" for s, t in zip(self.symbol, self.window_end_ns, strict=True)])


def read_feature_records(paths: Iterable[str | Path]) -> list[FeatureRecord]:
    records: list[FeatureRecord] = []
    for path in paths:
        with open(path, "rb") as f:
            records.extend(FeatureRecord.model_validate_json(line) for line in f if line.strip())
    records.sort(key=lambda r: (r.window_end_ns, r.symbol))
    return records


def feature_table(records: list[FeatureRecord]) -> FeatureTable:
    nan = math.nan
    raw = np.array([[nan if v is None else v for v in r.regime_features] for r in records], dtype=np.float64)
    pattern = np.array([r.pattern for r in records], dtype=np.float32).reshape(len(records), -1)
    vectors = {(r.symbol, r.window_end_ns): i for i, r in enumerate(records)}
    patterns = []
    for r in records:
        for m in r.matured:
            i = vectors.get((r.symbol, m.end_ns))
            if i is not None and np.any(pattern[i]):
                patterns.append(
                    Pattern(
                        r.symbol,
                        m.start_ns,
                        m.end_ns,
                        m.outcome_end_ns,
                        pattern[i],
                        np.asarray(m.outcome, dtype=np.float32),
                    )
                )
    return FeatureTable(
        symbol=np.array([r.symbol for r in records]),
        window_end_ns=np.array([r.window_end_ns for r in records], dtype=np.int64),
        raw=raw,
        pattern=pattern,
        patterns=patterns,
    )


def trend_score(pattern: np.ndarray) -> np.ndarray:
    """Directional persistence of the last 32 bars: ``|sum r_b| / sqrt(sum r_b^2)`` over the pattern's
    volatility-normalised bar returns (channel 0), in [0, sqrt(32)].

    A driftless random walk gives about ``sqrt(2/pi) ~ 0.8``; a trend pushes it towards ``sqrt(32)``; mean
    reversion (negatively autocorrelated returns) pulls it towards 0. Rows without returns score 0.
    ``pattern [N, 128]`` -> ``[N]``.
    """
    r = np.asarray(pattern, dtype=np.float64).reshape(len(pattern), PATTERN_BARS, N_CHANNELS)[:, :, 0]
    ss = np.sqrt((r * r).sum(axis=1))
    return np.divide(np.abs(r.sum(axis=1)), ss, out=np.zeros(len(r)), where=ss > 0)
