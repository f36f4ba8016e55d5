"""Offline-fitted normalisation of the 20-d regime vector (layout ``types.REGIME_FEATURE_NAMES``).

The heavy-tailed level features already arrive as log ratios to the symbol's baseline (features/baseline.py),
so per feature ``j`` this is:

1. z-score ``(x - mean_j) / std_j`` with statistics fitted offline on the training set (finite values only;
   ``std_j = 1`` when a feature is constant), then NaN -> 0, i.e. a missing value is imputed as the fitted mean;
2. the SSR/LULD one-hot is passed through untouched (it is already on a unit scale and must stay exact).

The fitted statistics travel with the model artifacts as JSON (:meth:`FeatureNormalizer.to_dict`), tagged
with ``FEATURE_LAYOUT_VERSION``; loading statistics of another layout is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.layout import FEATURE_LAYOUT_VERSION, REGIME_FEATURE_DIM, REGIME_FEATURE_NAMES

PASSTHROUGH_FEATURES: frozenset[str] = frozenset(n for n in REGIME_FEATURE_NAMES if n.startswith("ssr_luld_"))

_PASS_MASK = np.array([n in PASSTHROUGH_FEATURES for n in REGIME_FEATURE_NAMES])


def _check_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != REGIME_FEATURE_DIM:
        raise ValueError(f"expected raw regime features of shape [N, {REGIME_FEATURE_DIM}], got {x.shape}")
    if np.isinf(x).any():
        raise ValueError(f"raw regime features contain inf at (row, col) {tuple(np.argwhere(np.isinf(x))[0])}")
    return x


@dataclass(frozen=True, slots=True)
class FeatureNormalizer:
    """Fitted statistics (``[20]`` arrays); build with :meth:`fit` or :meth:`from_dict`."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> FeatureNormalizer:
        """Fit on raw features ``x`` [N, 20] (NaN allowed; a feature needs at least one finite value)."""
        x = _check_matrix(x)
        mean = np.zeros(REGIME_FEATURE_DIM)
        std = np.ones(REGIME_FEATURE_DIM)
        for j in np.flatnonzero(~_PASS_MASK):
            col = x[:, j][np.isfinite(x[:, j])]
            if col.size == 0:
                raise ValueError(f"cannot fit {REGIME_FEATURE_NAMES[j]}: no finite value")
            mean[j] = col.mean()
            sd = col.std()
            std[j] = sd if sd > 0 else 1.0
        return cls(mean, std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 features: [20] -> [20] or [N, 20] -> [N, 20] (see the module docstring)."""
        single = np.ndim(x) == 1
        m = _check_matrix(np.atleast_2d(x))
        z = (m - self.mean) / self.std
        z[:, _PASS_MASK] = m[:, _PASS_MASK]
        z = np.nan_to_num(z, nan=0.0)
        return (z[0] if single else z).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able statistics with the layout version and feature names."""
        return {
            "layout_version": FEATURE_LAYOUT_VERSION,
            "feature_names": list(REGIME_FEATURE_NAMES),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureNormalizer:
        """Inverse of :meth:`to_dict`; refuses another layout version or feature order."""
        version = d.get("layout_version")
        if version != FEATURE_LAYOUT_VERSION:
            raise ValueError(
                f"normaliser fitted for feature layout version {version!r}, this code has {FEATURE_LAYOUT_VERSION}: "
                "refit it on features of the current layout"
            )
        if tuple(d.get("feature_names", ())) != REGIME_FEATURE_NAMES:
            raise ValueError(f"normaliser feature names {d.get('feature_names')!r} differ from REGIME_FEATURE_NAMES")
        arrays = {}
        for key in ("mean", "std"):
            a = np.asarray(d[key], dtype=np.float64)
            if a.shape != (REGIME_FEATURE_DIM,) or not np.all(np.isfinite(a)):
                raise ValueError(f"normaliser {key} must be {REGIME_FEATURE_DIM} finite numbers, got {d[key]!r}")
            arrays[key] = a
        if np.any(arrays["std"] <= 0):
            raise ValueError("normaliser std must be > 0")
        return cls(**arrays)
