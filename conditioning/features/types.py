"""The retrieval library's entry, shared by the feature estimators, the models and the dataflow.

Pure Python + numpy: importing this module must never pull in torch, Bytewax or Kafka. The layout it refers to
(dimensions, names) is :mod:`schemas.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    outcome: np.ndarray  # [OUTCOME_DIM] float32: see schemas.layout.OUTCOME_NAMES
