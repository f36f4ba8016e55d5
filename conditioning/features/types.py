"""Types shared by the feature estimators, the models and the dataflow.

Pure Python + numpy: importing this module must never pull in torch, Bytewax or Kafka.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

#: Version of the 20-d regime feature layout and of the 128-d pattern layout. Bump on any change of order,
#: meaning or units; model artifacts record it and refuse to load against another.
#: 2: the six level features are log ratios to the symbol's trailing baseline (features/baseline.py).
FEATURE_LAYOUT_VERSION = 2

REGIME_FEATURE_DIM = 20
PATTERN_DIM = 128


class SsrLuldState(enum.IntEnum):
    """Trading-restriction state of a symbol, in precedence order (higher wins when several hold)."""

    NORMAL = 0
    SSR_ACTIVE = 1
    LULD_LIMIT = 2
    HALTED = 3


#: The level features: stock-specific in level, so the regime vector carries them relative to the symbol's own
#: trailing baseline, as ``log(x / baseline)`` (see features/baseline.py); the raw values stay in the record.
LEVEL_FEATURES: tuple[str, ...] = (
    "tsrv",
    "bpv",
    "amihud",
    "spread_quoted_rel_tw",
    "spread_effective_rel_vw",
    "spread_mid_vol",
)

#: Names of the 20 regime features, in vector order (layout version FEATURE_LAYOUT_VERSION). ``log_<x>_rel``
#: is ``log(x / trailing baseline of x)`` for that symbol; the rest are on their natural scale.
REGIME_FEATURE_NAMES: tuple[str, ...] = (
    "log_tsrv_rel",
    "log_bpv_rel",
    "log_amihud_rel",
    *(f"ssr_luld_{s.name.lower()}" for s in SsrLuldState),
    *(f"volume_profile_{i}" for i in range(10)),
    "log_spread_quoted_rel_tw_rel",
    "log_spread_effective_rel_vw_rel",
    "log_spread_mid_vol_rel",
)
assert len(REGIME_FEATURE_NAMES) == REGIME_FEATURE_DIM


@dataclass(frozen=True, slots=True)
class Pattern:
    """One entry of the retrieval library: the pattern vector of a window and its realised outcome.

    A pattern may enter the library only once ``outcome`` is known (point-in-time): ``outcome_end_ns`` is the
    event time at which it became known. ``[start_ns, end_ns)`` is the window the vector describes; retrieval
    excludes library patterns whose ``[start_ns, outcome_end_ns)`` overlaps the query window (embargo).
    """

    symbol: str
    start_ns: int
    end_ns: int
    outcome_end_ns: int
    vector: np.ndarray  # [PATTERN_DIM] float32
    outcome: np.ndarray  # [OUTCOME_DIM] float32: see OUTCOME_NAMES


#: Outcome attached to a pattern once known: forward log return and forward log realised variance over the
#: horizon (``pipeline.pattern_horizon_bars`` bars after ``end_ns``).
OUTCOME_NAMES: tuple[str, ...] = ("fwd_log_return", "fwd_log_rv")
OUTCOME_DIM = len(OUTCOME_NAMES)
