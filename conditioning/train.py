"""Training functions behind the CLI (``hrmcond train-regime``, ``build-patterns``, ``audit-leakage``).

Weak labels. The first regime model learns rules over the un-normalised 20-d features (``REGIME_FEATURE_NAMES``:
TSRV, BPV and Amihud relative to the symbol's own trailing baseline, so "high" means high for that stock) plus
one statistic the features do not hold, ``trend_score`` (e.g. the lookback log return / sqrt(realised
variance), or the first-order return autocorrelation: positive = trending, negative = mean reverting).
Thresholds are quantiles of the *training* split, kept in ``LabelRules`` (and in the artifact). First matching
rule wins:

1. ``luld_active``: the LULD_LIMIT or HALTED one-hot is set;
2. ``ssr_active``: the SSR_ACTIVE one-hot is set;
3. ``illiquid``: log_amihud_rel >= its 90% quantile;
4. ``high_vol``: log_tsrv_rel or log_bpv_rel >= its 80% quantile;
5. ``low_vol``: log_tsrv_rel and log_bpv_rel both <= their 20% quantiles;
6. ``trending``: trend_score >= its 80% quantile;
7. ``mean_reverting``: trend_score <= its 20% quantile;
8. ``normal``: otherwise.

The classifier only sees the normalised features, so rules 6-7 are learnable only as far as the features
reflect the trend statistic: their held-out recall says how far.

Splits are by time (the last ``val_fraction`` of rows is held out), never shuffled across time, and the
normaliser and the label thresholds are fitted on the training split only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from conditioning.audit import cohen_kappa
from conditioning.features.normalize import FeatureNormalizer
from conditioning.features.types import Pattern
from conditioning.rag import PatternRAG
from conditioning.regime import REGIME_INDEX, REGIME_NAMES, RegimeClassifier
from schemas.layout import PATTERN_DIM, REGIME_FEATURE_DIM, REGIME_FEATURE_NAMES

_COL = {name: i for i, name in enumerate(REGIME_FEATURE_NAMES)}


@dataclass(frozen=True)
class LabelRules:
    """Thresholds of the weak-labelling rules (module docstring), fitted as training-split quantiles."""

    tsrv_hi: float
    tsrv_lo: float
    bpv_hi: float
    bpv_lo: float
    amihud_hi: float
    trend_hi: float
    trend_lo: float

    @classmethod
    def fit(cls, raw: np.ndarray, trend_score: np.ndarray) -> LabelRules:
        raw, trend_score = _check_raw(raw, trend_score)
        q = np.quantile
        tsrv, bpv, amihud = (raw[:, _COL[f"log_{name}_rel"]] for name in ("tsrv", "bpv", "amihud"))
        return cls(
            float(q(tsrv, 0.8)),
            float(q(tsrv, 0.2)),
            float(q(bpv, 0.8)),
            float(q(bpv, 0.2)),
            float(q(amihud, 0.9)),
            float(q(trend_score, 0.8)),
            float(q(trend_score, 0.2)),
        )

    def apply(self, raw: np.ndarray, trend_score: np.ndarray) -> np.ndarray:
        """``raw [N, 20]``, ``trend_score [N]`` -> regime index ``[N]`` (int64)."""
        raw, trend_score = _check_raw(raw, trend_score)
        tsrv, bpv, amihud = (raw[:, _COL[f"log_{name}_rel"]] for name in ("tsrv", "bpv", "amihud"))
        rules = [  # first match wins
            ("luld_active", (raw[:, _COL["ssr_luld_luld_limit"]] > 0.5) | (raw[:, _COL["ssr_luld_halted"]] > 0.5)),
            ("ssr_active", raw[:, _COL["ssr_luld_ssr_active"]] > 0.5),
            ("illiquid", amihud >= self.amihud_hi),
            ("high_vol", (tsrv >= self.tsrv_hi) | (bpv >= self.bpv_hi)),
            ("low_vol", (tsrv <= self.tsrv_lo) & (bpv <= self.bpv_lo)),
            ("trending", trend_score >= self.trend_hi),
            ("mean_reverting", trend_score <= self.trend_lo),
        ]
        labels = np.full(len(raw), REGIME_INDEX["normal"], dtype=np.int64)
        for name, hit in reversed(rules):  # later assignments win, so apply in reverse precedence
            labels[hit] = REGIME_INDEX[name]
        return labels


def _check_raw(raw: np.ndarray, trend_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw, trend_score = np.asarray(raw, dtype=np.float64), np.asarray(trend_score, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != REGIME_FEATURE_DIM:
        raise ValueError(f"raw features must be [N, {REGIME_FEATURE_DIM}], got {raw.shape}")
    if trend_score.shape != (len(raw),):
        raise ValueError(f"trend_score must be [{len(raw)}], got {trend_score.shape}")
    if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(trend_score))):
        raise ValueError("raw features and trend_score must be finite (drop warm-up bars first)")
    return raw, trend_score


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
    rules: LabelRules
    confusion: np.ndarray  # [8, 8] held-out, rows true
    accuracy: float  # held-out
    kappa: float  # held-out Cohen's kappa
    fingerprint: str  # of the training inputs

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "rules": asdict(self.rules),
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
    trend_score: np.ndarray,
    *,
    val_fraction: float = 0.2,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> RegimeFit:
    """``hrmcond train-regime``: rows in time order -> normaliser + classifier + held-out evaluation."""
    raw, trend_score = _check_raw(raw, trend_score)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(round(len(raw) * (1.0 - val_fraction)))
    if cut < 10 or len(raw) - cut < 10:
        raise ValueError(f"{len(raw)} rows leave too few for a split at val_fraction={val_fraction}")
    rules = LabelRules.fit(raw[:cut], trend_score[:cut])
    labels = rules.apply(raw, trend_score)
    normalizer = FeatureNormalizer.fit(raw[:cut])
    x = np.asarray(normalizer.transform(raw), dtype=np.float32)
    model = train_classifier(x[:cut], labels[:cut], epochs=epochs, seed=seed, progress=progress)
    pred = predict(model, x[cut:])
    n = len(REGIME_NAMES)
    return RegimeFit(
        model,
        normalizer,
        rules,
        confusion_matrix(labels[cut:], pred, n),
        float(np.mean(pred == labels[cut:])),
        cohen_kappa(labels[cut:], pred, n),
        fingerprint(raw, trend_score),
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
