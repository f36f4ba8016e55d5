"""Market-state conditioning for HRM: regime classifier + pattern retrieval -> a context -> FiLM.

The public names load lazily: importing a pure-numpy submodule (``conditioning.features``, ``conditioning.sim``:
the feature dataflow, the simulator, the importers) runs this file first, and must not import torch or hnswlib
with it (tests/test_layers.py checks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "ConditioningConfig": "conditioning.config",
    "FiLMLayer": "conditioning.film",
    "RegimeClassifier": "conditioning.regime",
    "RegimeSmoother": "conditioning.hysteresis",
    "PatternRAG": "conditioning.rag",
    "ConditioningSystem": "conditioning.system",
    "ConditioningOutput": "conditioning.system",
    "RagUnavailableError": "conditioning.system",
}
__all__ = [
    "ConditioningConfig",
    "ConditioningOutput",
    "ConditioningSystem",
    "FiLMLayer",
    "PatternRAG",
    "RagUnavailableError",
    "RegimeClassifier",
    "RegimeSmoother",
]

if TYPE_CHECKING:
    from conditioning.config import ConditioningConfig
    from conditioning.film import FiLMLayer
    from conditioning.hysteresis import RegimeSmoother
    from conditioning.rag import PatternRAG
    from conditioning.regime import RegimeClassifier
    from conditioning.system import ConditioningOutput, ConditioningSystem, RagUnavailableError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'conditioning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
