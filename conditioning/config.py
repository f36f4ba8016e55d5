"""Typed configuration of the conditioning models: the specification's ``conditioning:`` block, exactly.

Unknown keys are errors (``extra="forbid"``), so a typo never silently becomes a default.
"""

from __future__ import annotations

from pydantic import Field

from schemas.strict import Strict


class RegimeConfig(Strict):
    num_regimes: int = Field(8, ge=2, le=64)
    #: Largest tolerated share of bars in a day on which the emitted regime changes (spec: 0.05).
    stability_threshold: float = Field(0.05, gt=0.0, lt=1.0)


class RagConfig(Strict):
    pattern_dim: int = Field(128, ge=1)
    timeout_ms: int = Field(60, ge=1, le=10_000)
    max_patterns: int = Field(10_000, ge=1)


class FilmConfig(Strict):
    context_dim: int = Field(256, ge=1)
    target_dim: int = Field(512, ge=1)


class ConditioningConfig(Strict):
    enable_regime: bool = False
    enable_rag: bool = False
    enable_hybrid: bool = False
    fail_open: bool = True
    regime: RegimeConfig = RegimeConfig()
    rag: RagConfig = RagConfig()
    film: FilmConfig = FilmConfig()
