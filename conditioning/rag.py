"""Pattern retrieval as a context: the k nearest library patterns of a query (conditioning/library.py: exact
search, point in time, deadline) and their known outcomes -> a learned ``[B, context_dim]`` context.

Context. Per query, with similarities ``s_i = 1 - d_i`` of the valid neighbours and weights ``w =
softmax(s / temperature)``: the weighted mean and weighted std of the standardised outcomes
(``OUTCOME_NAMES``; standardised by the live library's mean and std), the max and the mean similarity: 6
numbers -> ``Linear(6, 64) -> GELU -> Linear(64, context_dim)`` (17,088 parameters at 256). A row with no
valid neighbour gets a zero (neutral) context.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from conditioning.library import PatternLibrary, Retrieval
from schemas.records import RAG_SUMMARY_DIM as SUMMARY_DIM

HEAD_HIDDEN = 64


class PatternRAG(PatternLibrary, nn.Module):
    """A :class:`PatternLibrary` with the torch head that projects a retrieval to a context."""

    def __init__(
        self,
        pattern_dim: int,
        context_dim: int,
        *,
        temperature: float = 0.05,
        **library: int,
    ):
        nn.Module.__init__(self)
        if context_dim < 1:
            raise ValueError(f"PatternRAG: context_dim must be >= 1, got {context_dim}")
        if temperature <= 0:
            raise ValueError(f"PatternRAG: temperature must be > 0, got {temperature}")
        PatternLibrary.__init__(self, pattern_dim, **library)
        self.context_dim = context_dim
        self.temperature = temperature
        self.head = nn.Sequential(nn.Linear(SUMMARY_DIM, HEAD_HIDDEN), nn.GELU(), nn.Linear(HEAD_HIDDEN, context_dim))

    def retrieve(
        self, query_features: Tensor, timeout_ms: float = 60, query_windows: Tensor | np.ndarray | None = None
    ) -> Retrieval:
        """:meth:`PatternLibrary.search` for a tensor ``query_features [B, pattern_dim]`` (on any device)."""
        query = query_features.detach().to("cpu", torch.float32).numpy().copy()  # the worker may outlive us
        return self.search(query, timeout_ms, None if query_windows is None else np.asarray(query_windows))

    def summarise(self, retrieval: Retrieval) -> tuple[np.ndarray, np.ndarray]:
        """An ``ok`` retrieval -> ``(summary [B, SUMMARY_DIM] float32, has_any [B] bool)``: the head's input (module
        docstring) and whether the row had a valid neighbour (its summary is then meaningless and its context 0).
        No learned weights: what a data set records so that the head trains on exactly what it sees live."""
        if retrieval.status != "ok":
            raise ValueError(f"cannot summarise a retrieval with status {retrieval.status!r}")
        sim, outcomes = retrieval.similarity, retrieval.outcomes  # [B, k], [B, k, O]
        assert sim is not None and outcomes is not None  # an ok retrieval carries them
        valid = retrieval.valid  # [B, k]
        logits = np.where(valid, sim / self.temperature, -np.inf)
        has_any = valid.any(axis=1)  # [B]
        logits[~has_any] = 0.0
        w = np.exp(logits - logits.max(axis=1, keepdims=True))  # [B, k]
        w /= w.sum(axis=1, keepdims=True)
        z = (outcomes - self._outcome_mean) / self._outcome_std  # [B, k, O]
        mean = np.einsum("bk,bko->bo", w, z)  # [B, O]
        std = np.sqrt(np.maximum(np.einsum("bk,bko->bo", w, (z - mean[:, None]) ** 2), 0.0))  # [B, O]
        n_valid = np.maximum(valid.sum(axis=1), 1)
        summary = np.concatenate(
            [mean, std, sim.max(axis=1, initial=0.0)[:, None], (sim.sum(axis=1) / n_valid)[:, None]], axis=1
        )  # [B, SUMMARY_DIM]
        return summary.astype(np.float32), np.asarray(has_any, dtype=bool)

    def head_context(self, summary: Tensor, has_any: Tensor) -> Tensor:
        """``summary [B, SUMMARY_DIM]``, ``has_any [B]`` bool -> context ``[B, context_dim]`` (differentiable; zero
        rows without a neighbour)."""
        return self.head(summary) * has_any.unsqueeze(1).to(summary.dtype)

    def project(self, retrieval: Retrieval) -> Tensor:
        """An ``ok`` retrieval -> context ``[B, context_dim]``; zero rows where a query has no valid neighbour."""
        summary, has_any = self.summarise(retrieval)
        ref = next(self.head.parameters())  # the first layer's weight: the head's dtype and device
        return self.head_context(
            torch.as_tensor(summary, dtype=ref.dtype, device=ref.device), torch.as_tensor(has_any, device=ref.device)
        )

    def forward(
        self, query_features: Tensor, timeout_ms: int = 60, query_windows: Tensor | np.ndarray | None = None
    ) -> Tensor | None:
        """``[B, pattern_dim]`` -> ``[B, context_dim]``, or ``None`` (fail-open: timeout, empty, error)."""
        retrieval = self.retrieve(query_features, timeout_ms, query_windows)
        return self.project(retrieval) if retrieval.status == "ok" else None
