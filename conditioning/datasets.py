"""Training data from replayed history: feature-record JSON Lines -> arrays and patterns.

The records come from ``hrmcond replay --features-out`` (the dataflow's own feature path), so a model is
trained on exactly what it will see live. :func:`features_of_ticks` computes the same arrays in-process from a
canonical tick table (evaluations on a simulated market, conditioning/regime_eval.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from conditioning.features.columns import Ticks
from conditioning.features.state import FeatureParams, SymbolFeatures, replay
from conditioning.features.types import Pattern
from schemas.layout import SsrLuldState
from schemas.records import FeatureRecord
from schemas.reference import ReferenceRow
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


def features_of_ticks(
    ticks: pa.Table, reference: Iterable[ReferenceRow], params: FeatureParams | None = None
) -> FeatureTable:
    """The feature table of a canonical tick table (``schemas.canonical``, time-ordered, regular session only,
    as the simulator writes it) without the dataflow: one :class:`SymbolFeatures` per symbol fed its ticks and
    every bar close, reference rows up front (the tracker keeps them until their date). Like the dataflow, a
    bar is kept when it saw a tick or ends in a LULD limit state or halt. Matured patterns are not collected.
    """
    params = params or FeatureParams()
    reference = list(reference)
    rows: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    for symbol in sorted(set(ticks["symbol"].to_pylist())):
        features = SymbolFeatures(symbol, params)
        for r in reference:
            if r.symbol == symbol:
                features.on_reference(r.date, r.prev_close, r.tier)
        own = Ticks.from_canonical(ticks, symbol)
        bars = replay(features, own)
        ends = np.array([b.window_end_ns for b in bars], dtype=np.int64)
        ticks_in_bar = np.bincount(np.searchsorted(ends, own.ts_ns, side="right"), minlength=len(bars))
        rows.extend(
            (symbol, b.window_end_ns, b.regime_features, b.pattern)
            for b, n in zip(bars, ticks_in_bar, strict=False)
            if n > 0 or b.ssr_luld_state >= SsrLuldState.LULD_LIMIT
        )
    rows.sort(key=lambda r: (r[1], r[0]))
    return FeatureTable(
        symbol=np.array([r[0] for r in rows]),
        window_end_ns=np.array([r[1] for r in rows], dtype=np.int64),
        raw=np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), -1),
        pattern=np.array([r[3] for r in rows], dtype=np.float32).reshape(len(rows), -1),
        patterns=[],
    )
