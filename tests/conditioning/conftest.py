"""Fixtures for the model tests: synthetic patterns with a known geometry, and a parameter counter."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.features.types import Pattern
from schemas.layout import OUTCOME_DIM, PATTERN_DIM

BAR_NS = 60_000_000_000  # one-minute bars


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def clustered_vectors(rng: np.random.Generator, n: int, clusters: int = 100, dim: int = PATTERN_DIM) -> np.ndarray:
    """``n`` vectors around ``clusters`` random centres (the shape of real pattern libraries: many near-repeats)."""
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def make_patterns(vectors: np.ndarray, first_id: int = 0, horizon_bars: int = 5, window_bars: int = 30) -> list:
    """Pattern i covers bars [i, i + window) and its outcome is known ``horizon_bars`` later; its outcome's
    first component is its id, so a retrieved outcome tells which pattern came back."""
    out = []
    for j, v in enumerate(vectors):
        i = first_id + j
        outcome = np.array([i, np.log1p(i)], dtype=np.float32)[:OUTCOME_DIM]
        out.append(
            Pattern(
                "XXX", i * BAR_NS, (i + window_bars) * BAR_NS, (i + window_bars + horizon_bars) * BAR_NS, v, outcome
            )
        )
    return out


def brute_force_knn(library: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine k-NN with numpy (the oracle for the library): indices ``[Q, k]``, most similar first."""
    a = library / np.linalg.norm(library, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ a.T), axis=1, kind="stable")[:, :k]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)
