"""Typed configuration of the conditioning models: the specification's ``conditioning:`` block, exactly.

Unknown keys are errors (``extra="forbid"``), so a typo never silently becomes a default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.layout import CONTEXT_DIM, NUM_REGIMES, PATTERN_DIM
from schemas.strict import Strict, fixed_at


class RegimeConfig(Strict):
    #: The classifier's named regimes (conditioning/regime.py) and the context record's ``regime_probs``.
    num_regimes: Annotated[int, fixed_at(NUM_REGIMES, "by the classifier's named regimes")] = NUM_REGIMES
    #: Largest tolerated share of bars in a day on which the emitted regime changes (spec: 0.05).
    stability_threshold: float = Field(0.05, gt=0.0, lt=1.0)


class RagConfig(Strict):
    pattern_dim: Annotated[int, fixed_at(PATTERN_DIM, "by the pattern layout (schemas/layout.py)")] = PATTERN_DIM
    timeout_ms: int = Field(60, ge=1, le=10_000)
    max_patterns: int = Field(10_000, ge=1)


class FilmConfig(Strict):
    context_dim: Annotated[int, fixed_at(CONTEXT_DIM, "by the context record (schemas/records.py)")] = CONTEXT_DIM
    target_dim: int = Field(512, ge=1)


class ConditioningConfig(Strict):
    enable_regime: bool = False
    enable_rag: bool = False
    enable_hybrid: bool = False
    fail_open: bool = True
    regime: RegimeConfig = RegimeConfig()
    rag: RagConfig = RagConfig()
    film: FilmConfig = FilmConfig()
