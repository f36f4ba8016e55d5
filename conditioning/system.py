"""The unified conditioner: normalised regime features + a pattern vector -> a 256-d context for FiLM.

Every component is always built (so one artifact serves every flag setting); the flags only route:

| regime | rag | hybrid | context |
|---|---|---|---|
| off | off | any | zeros: FiLM is then exactly the identity (see film.py) |
| on | off | any | ``state_ctx = MLP([x', p, pattern, d])`` |
| off | on | any | ``rag_ctx`` (PatternRAG's head) |
| on | on | off | ``state_ctx + rag_ctx`` |
| on | on | on | ``g * state_ctx + (1 - g) * rag_ctx``, ``g = sigmoid(MLP([state_ctx, rag_ctx]))`` per channel |

The regime part (``state_head``: ``10 + 8 + 128 + 1 -> 128 -> 256``, GELU; 51,968 parameters) reads the market
state itself, not only its summary: the normalised regime features ``x' [B, 10]`` (all but the volume profile,
``STATE_FEATURES``), the classifier's probabilities
``p = softmax(logits) [B, 8]``, the 128-d pattern and its signed direction ``d`` (:func:`pattern_direction`, about
N(0, 1) for a random walk, so a context can tell a rising trend from a falling one). An earlier design read
``p`` and ``p * d`` alone (16 numbers through two linear maps): the model given the raw inputs beat it on both
targets (docs/models.md, issue 11), because 8 probabilities from a classifier trained on other labels keep
only what those labels name. Without a pattern in ``features`` (regime alone, RAG off), the pattern and ``d``
enter as zeros.

``enable_hybrid`` with one branch off has nothing to fuse and gives that branch alone. When retrieval does
not answer (``timeout``/``error``), is not asked (``unavailable``: the caller's circuit breaker is open) or has
nothing to offer (``empty`` library, or no neighbour known before the query window for a row), the RAG part is
absent and the context is the regime part (zeros if regime is off too); with ``fail_open = false`` a
``timeout``, ``error`` or ``unavailable`` raises ``RagUnavailableError`` instead. An empty library is a cold
start, not a failure, in both modes.

The system never receives an identifier: ``features`` accepts only the two feature keys and refuses any
other (a ``puzzle_id`` or symbol passed by mistake is an error, not silently ignored).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from conditioning.config import ConditioningConfig
from conditioning.film import FiLMLayer
from conditioning.rag import PatternRAG, Retrieval
from conditioning.regime import RegimeClassifier
from schemas.layout import REGIME_FEATURE_DIM, REGIME_FEATURE_NAMES
from schemas.records import FAILED_OPEN, RagStatus

FEATURE_KEYS = ("regime_features", "pattern_features")
FUSION_HIDDEN = 32
STATE_HIDDEN = 128
#: The regime features the state head reads: all but the volume-at-price profile. Its 10 equal-width buckets
#: over a range of a few ticks alias onto the tick grid, so which buckets hold volume is set by how many ticks
#: the range spans, a persistent trait of each symbol's price level (on the evaluation market the symbols'
#: mean shares in buckets 0, 5 and 9 correlate +0.46 between the first and the last four days), and the
#: leakage audit detected it in trained contexts. The classifier still reads the profile; its 8
#: probabilities carry what the profile says about the regime and show no dependence on the symbol.
STATE_FEATURES = tuple(i for i, name in enumerate(REGIME_FEATURE_NAMES) if not name.startswith("volume_profile"))


def pattern_direction(pattern: Tensor) -> Tensor:
    """Signed direction of the pattern's 32 bars: ``d = sum_b r_b / sqrt(sum_b r_b^2)`` over its volatility-
    normalised returns (channel 0 of conditioning/features/pattern.py), 0 without returns. ``[B, 128]`` -> ``[B]``.
    Scale-free; a driftless walk gives about N(0, 1), a steady trend up to +-sqrt(32). (``trend_score`` in
    conditioning/datasets.py is its absolute value.)"""
    r = pattern.reshape(pattern.shape[0], -1, 4)[:, :, 0]  # [B, 32]
    ss = r.square().sum(dim=1).sqrt()
    return torch.where(ss > 0, r.sum(dim=1) / ss.clamp_min(1e-12), torch.zeros_like(ss))


class RagUnavailableError(RuntimeError):
    """Retrieval timed out or failed while ``fail_open`` is false."""


class GatedFusion(nn.Module):
    """Per-channel gate ``g = sigmoid(W2 GELU(W1 [a, b]))``; out ``= g a + (1 - g) b``. Starts at g = 0.5."""

    def __init__(self, dim: int, hidden: int = FUSION_HIDDEN):
        super().__init__()
        self.down = nn.Linear(2 * dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # [B, C], [B, C] -> [B, C]
        g = torch.sigmoid(self.up(nn.functional.gelu(self.down(torch.cat([a, b], dim=-1)))))
        return g * a + (1.0 - g) * b


@dataclass(frozen=True)
class ConditioningOutput:
    context: Tensor  # [B, context_dim]
    regime_probs: Tensor | None  # [B, num_regimes], None when regime is disabled
    rag_status: RagStatus
    latency_ms: dict[str, float] = field(default_factory=dict)  # regime, rag, fusion, total
    #: [B] bool, with status "ok": whether the row had an eligible neighbour (else its RAG part is zero)
    rag_rows: Tensor | None = None
    #: [B, SUMMARY_DIM], with status "ok": the retrieval summary the RAG head read (conditioning/rag.py)
    rag_summary: Tensor | None = None


class ConditioningSystem(nn.Module):
    def __init__(self, config: ConditioningConfig, *, rag_workers: int = 2):
        super().__init__()
        if not isinstance(config, ConditioningConfig):
            raise TypeError(f"ConditioningSystem needs a ConditioningConfig, got {type(config).__name__}")
        self.config = config
        self.enable_regime = config.enable_regime
        self.enable_rag = config.enable_rag
        self.enable_hybrid = config.enable_hybrid
        self.fail_open = config.fail_open
        dim = config.film.context_dim
        self.regime_classifier = RegimeClassifier(REGIME_FEATURE_DIM, config.regime.num_regimes)
        state_dim = len(STATE_FEATURES) + config.regime.num_regimes + config.rag.pattern_dim + 1
        self.state_head = nn.Sequential(nn.Linear(state_dim, STATE_HIDDEN), nn.GELU(), nn.Linear(STATE_HIDDEN, dim))
        self.pattern_rag = PatternRAG(
            config.rag.pattern_dim, dim, max_patterns=config.rag.max_patterns, workers=rag_workers
        )
        self.fusion = GatedFusion(dim)
        self.film_layer = FiLMLayer(dim, config.film.target_dim)

    def _batch(self, features: dict[str, Tensor]) -> int:
        extra = sorted(set(features) - set(FEATURE_KEYS))
        if extra:
            raise ValueError(
                f"ConditioningSystem takes only {FEATURE_KEYS}; got extra keys {extra}. "
                "It must never see an identifier."
            )
        needed = [k for k, on in zip(FEATURE_KEYS, (self.enable_regime, self.enable_rag), strict=True) if on]
        missing = [k for k in needed if k not in features]
        if missing:
            raise ValueError(f"features lack {missing}, needed by the enabled branches")
        sizes = {k: v.shape[0] for k, v in features.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"features must hold at least one tensor, all with one batch size; got {sizes}")
        return next(iter(sizes.values()))

    def _run(
        self,
        features: dict[str, Tensor],
        query_windows: np.ndarray | Tensor | None,
        timeout_ms: float | None = None,
        retrieve: bool = True,
    ) -> ConditioningOutput:
        t0 = time.perf_counter()
        batch = self._batch(features)
        ref = self.film_layer.down.weight
        probs: Tensor | None = None
        if self.enable_regime:
            probs = torch.softmax(self.regime_classifier(features["regime_features"]), dim=-1)  # [B, R]
        t1 = time.perf_counter()
        status: RagStatus = "disabled"
        summary: Tensor | None = None
        has_neighbours: Tensor | None = None
        if self.enable_rag:
            budget_ms = self.config.rag.timeout_ms if timeout_ms is None else timeout_ms
            if not retrieve:
                retrieval = Retrieval("unavailable")
            elif budget_ms <= 0:
                retrieval = Retrieval("timeout")  # the caller's deadline has passed
            else:
                retrieval = self.pattern_rag.retrieve(features["pattern_features"], budget_ms, query_windows)
            status = retrieval.status
            if status == "ok":
                summary_np, rows_np = self.pattern_rag.summarise(retrieval)
                summary = torch.as_tensor(summary_np, dtype=ref.dtype, device=ref.device)  # [B, S]
                has_neighbours = torch.as_tensor(rows_np, device=ref.device)  # [B]
            elif status in FAILED_OPEN and not self.fail_open:
                raise RagUnavailableError(
                    f"pattern retrieval {status} (timeout_ms={budget_ms}) with fail_open=false"
                ) from retrieval.error
        t2 = time.perf_counter()
        regime_x = features.get("regime_features") if self.enable_regime else None
        context = self.fuse(regime_x, probs, features.get("pattern_features"), summary, has_neighbours, batch)
        t3 = time.perf_counter()
        latency = {
            "regime": (t1 - t0) * 1e3,
            "rag": (t2 - t1) * 1e3,
            "fusion": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
        }
        return ConditioningOutput(context, probs, status, latency, has_neighbours, summary)

    def state_context(self, regime_features: Tensor, probs: Tensor, pattern: Tensor | None) -> Tensor:
        """The regime part (module table): ``state_head([x, p, pattern, d])`` ``[B, C]`` from the normalised regime
        features ``[B, 20]``, the classifier's probabilities ``[B, R]`` and the pattern ``[B, 128]`` (None: zeros)."""
        x = regime_features[:, list(STATE_FEATURES)].to(probs.dtype)
        if pattern is None:
            shape = (x.shape[0], self.config.rag.pattern_dim)
            pattern = torch.zeros(shape, dtype=probs.dtype, device=probs.device)
        pattern = pattern.to(probs.dtype)
        return self.state_head(torch.cat([x, probs, pattern, pattern_direction(pattern)[:, None]], dim=1))

    def fuse(
        self,
        regime_features: Tensor | None,
        probs: Tensor | None,
        pattern: Tensor | None,
        summary: Tensor | None,
        has_neighbours: Tensor | None,
        batch: int,
    ) -> Tensor:
        """The context from the conditioning inputs (module table): the normalised regime features ``[B, 20]`` and
        their regime probabilities ``[B, R]`` (None: regime off), the pattern ``[B, 128]`` (None: zeros), the
        retrieval summary ``[B, SUMMARY_DIM]`` and its rows with a neighbour ``[B]`` bool (None: no RAG part,
        whatever the reason). Differentiable: training from a data set's recorded inputs (conditioning/value.py)
        runs exactly this, so the heads train on what they see live."""
        ref = self.film_layer.down.weight
        regime_ctx = None
        if probs is not None:
            if regime_features is None:
                raise ValueError("fuse: regime probabilities without the regime features they came from")
            regime_ctx = self.state_context(regime_features, probs, pattern)  # [B, C]
        if summary is None or has_neighbours is None:
            if regime_ctx is not None:
                return regime_ctx
            return torch.zeros(batch, self.config.film.context_dim, dtype=ref.dtype, device=ref.device)
        rag_ctx = self.pattern_rag.head_context(summary, has_neighbours)  # [B, C]
        if regime_ctx is None:
            return rag_ctx
        if self.enable_hybrid:  # rows without a neighbour keep the regime part alone
            return torch.where(has_neighbours[:, None], self.fusion(regime_ctx, rag_ctx), regime_ctx)
        return regime_ctx + rag_ctx

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """``{"regime_features": [B, 20] normalised, "pattern_features": [B, 128]}`` -> context ``[B, 256]``."""
        return self._run(features, None).context

    @torch.no_grad()
    def condition(
        self,
        features: dict[str, Tensor],
        query_windows: np.ndarray | Tensor | None = None,
        timeout_ms: float | None = None,
        retrieve: bool = True,
    ) -> ConditioningOutput:
        """Inference for the dataflow, once per bar batch: the context plus regime probabilities, RAG status
        and per-stage latencies (ms). ``query_windows [B, 2]`` int64 ``(start_ns, end_ns)`` makes retrieval
        point-in-time (see library.py). ``timeout_ms`` overrides ``rag.timeout_ms`` for this call (a caller that
        splits a batch passes what is left of one deadline; 0 = already past it, fail open at once).
        ``retrieve=False``: do not query the index (status ``unavailable``; a circuit breaker's open state)."""
        return self._run(features, query_windows, timeout_ms, retrieve)
