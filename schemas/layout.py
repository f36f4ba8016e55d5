"""The feature layout every wire format and model shares: its version, dimensions, names and the SSR/LULD states.

The bottom of the import graph (``schemas`` <- ``conditioning`` <- ``flows``): pure Python, no numpy needed.
"""

from __future__ import annotations

import enum

#: Version of the 20-d regime feature layout and of the 128-d pattern layout. Bump on any change of order,
#: meaning or units; model artifacts record it and refuse to load against another.
#: 2: the six level features are log ratios to the symbol's trailing baseline (conditioning/features/baseline.py).
FEATURE_LAYOUT_VERSION = 2

REGIME_FEATURE_DIM = 20
PATTERN_DIM = 128
#: Width of the conditioning context a ContextRecord carries (the FiLM input).
CONTEXT_DIM = 256
#: Regimes the classifier tells apart (conditioning/regime.py names them).
NUM_REGIMES = 8


class SsrLuldState(enum.IntEnum):
    """Trading-restriction state of a symbol, in precedence order (higher wins when several hold)."""

    NORMAL = 0
    SSR_ACTIVE = 1
    LULD_LIMIT = 2
    HALTED = 3


#: The level features: stock-specific in level, so the regime vector carries them relative to the symbol's own
#: trailing baseline, as ``log(x / baseline)`` (see conditioning/features/baseline.py); the raw values stay in
#: the record.
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

#: Outcome attached to a pattern once known: forward log return and forward log realised variance over the
#: horizon (``pipeline.pattern_horizon_bars`` bars after the pattern's end).
OUTCOME_NAMES: tuple[str, ...] = ("fwd_log_return", "fwd_log_rv")
OUTCOME_DIM = len(OUTCOME_NAMES)
