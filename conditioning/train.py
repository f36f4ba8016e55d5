"""Training functions behind the CLI (``hrmcond train-regime``, ``build-patterns``, ``audit-leakage``).

The regime classifier learns labels given to it (conditioning/labels.py: the simulator's truth, or the
statistical evidence rules) from the normalised 20-d features. Rows with undefined features (NaN) stay in:
the normaliser imputes them as the live path does, so training sees what serving sees.

Splits are by time (the last ``val_fraction`` of rows is held out), never shuffled across time, and the
normaliser is fitted on the training split only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from conditioning.audit import cohen_kappa
from conditioning.features.normalize import FeatureNormalizer
from conditioning.features.types import Pattern
from conditioning.rag import PatternRAG
from conditioning.regime import REGIME_NAMES, RegimeClassifier
from schemas.layout import PATTERN_DIM, REGIME_FEATURE_DIM


def _check_rows(raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw, labels = np.asarray(raw, dtype=np.float64), np.asarray(labels)
    if raw.ndim != 2 or raw.shape[1] != REGIME_FEATURE_DIM:
        raise ValueError(f"raw features must be [N, {REGIME_FEATURE_DIM}], got {raw.shape}")
    if labels.shape != (len(raw),):
        raise ValueError(f"labels must be [{len(raw)}], got {labels.shape}")
    if labels.size and not (labels.min() >= 0 and labels.max() < len(REGIME_NAMES)):
        raise ValueError(f"labels must be regime indices in 0..{len(REGIME_NAMES) - 1}")
    return raw, labels.astype(np.int64)


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> RegimeClassifier:
    """Fit a RegimeClassifier on normalised ``x [N, 20]`` and labels ``y [N]``: AdamW, cross-entropy weighted
    by inverse sqrt class frequency (rare regimes such as LULD are not drowned by ``normal``)."""
    torch.manual_seed(seed)
    model = RegimeClassifier(x.shape[1], len(REGIME_NAMES))
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    freq = torch.bincount(yt, minlength=len(REGIME_NAMES)).float().clamp_min(1.0)
    weight = freq.rsqrt() / freq.rsqrt().mean()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="train-regime", unit="epoch", disable=not progress):
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: RegimeClassifier, x: np.ndarray) -> np.ndarray:
    """Normalised ``x [N, 20]`` -> arg-max regime ``[N]``."""
    return model(torch.as_tensor(x, dtype=torch.float32)).argmax(-1).numpy()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts, rows = true regime, columns = predicted."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass
class RegimeFit:
    model: RegimeClassifier
    normalizer: FeatureNormalizer
    confusion: np.ndarray  # [8, 8] held-out, rows true
    accuracy: float  # held-out
    kappa: float  # held-out Cohen's kappa
    fingerprint: str  # of the training inputs

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "confusion": self.confusion.tolist(),
            "regimes": list(REGIME_NAMES),
            "training_fingerprint": self.fingerprint,
        }


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes: identifies the training data in the manifest."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def fit_regime_classifier(
    raw: np.ndarray,
    labels: np.ndarray,
    *,
    val_fraction: float = 0.2,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> RegimeFit:
    """``hrmcond train-regime``: raw rows in time order and their labels -> normaliser + classifier + held-out
    evaluation against the labels."""
    raw, labels = _check_rows(raw, labels)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(round(len(raw) * (1.0 - val_fraction)))
    if cut < 10 or len(raw) - cut < 10:
        raise ValueError(f"{len(raw)} rows leave too few for a split at val_fraction={val_fraction}")
    normalizer = FeatureNormalizer.fit(raw[:cut])
    x = np.asarray(normalizer.transform(raw), dtype=np.float32)
    model = train_classifier(x[:cut], labels[:cut], epochs=epochs, seed=seed, progress=progress)
    pred = predict(model, x[cut:])
    n = len(REGIME_NAMES)
    return RegimeFit(
        model,
        normalizer,
        confusion_matrix(labels[cut:], pred, n),
        float(np.mean(pred == labels[cut:])),
        cohen_kappa(labels[cut:], pred, n),
        fingerprint(raw, labels),
    )


def build_pattern_library(
    patterns: Iterable[Pattern],
    *,
    as_of_ns: int | None = None,
    max_patterns: int = 10_000,
    context_dim: int = 256,
    chunk: int = 2_048,
    progress: bool = True,
    rag: PatternRAG | None = None,
) -> PatternRAG:
    """``hrmcond build-patterns``: a point-in-time library from replayed history.

    Patterns are inserted in the order their outcomes became known (``outcome_end_ns``), so eviction drops the
    oldest knowledge first; with ``as_of_ns`` any pattern whose outcome was not yet known is refused. ``rag``:
    rebuild this (a loaded model's) library instead of a new one (``max_patterns``/``context_dim`` then unused).
    Its previous entries are dropped first: the result holds exactly ``patterns``, so building twice does not
    duplicate entries, and an ``as_of_ns`` rebuild leaves no later pattern behind.
    """
    ordered = sorted(patterns, key=lambda p: p.outcome_end_ns)
    if rag is None:
        rag = PatternRAG(PATTERN_DIM, context_dim, max_patterns=max_patterns)
    else:
        rag.clear_library()
    for start in tqdm(range(0, len(ordered), chunk), desc="build-patterns", unit="chunk", disable=not progress):
        rag.update_pattern_library(ordered[start : start + chunk], as_of_ns=as_of_ns)
    return rag
