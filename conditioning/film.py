"""FiLM (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer") for HRM's L-module.

    y[b, t, :] = gamma[b, :] * x[b, t, :] + beta[b, :],    gamma = 1 + delta

``(delta, beta)`` come from a bottleneck generator ``context -> W1 -> SiLU -> W2``. A plain ``Linear(256,
1024)`` would cost 263,168 parameters, over the 0.1M budget; the bottleneck ``256 -> 64 -> 1024`` costs
``(256 + 1024) * 64 = 81,920``.

Two choices make the identity exact, not approximate:
- ``W2`` is zero-initialised (as DiT's adaLN-Zero), so a fresh layer is the identity for every context;
- neither layer has a bias and ``SiLU(0) = 0``, so a zero context gives ``delta = beta = 0`` for any
  weights, also after training. The conditioning system emits a zero context when every feature flag is
  off or the conditioning is unavailable, and that path must leave HRM exactly unconditioned.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Width of the generator's bottleneck; (context_dim + 2 * target_dim) * r must stay <= 100k parameters.
FILM_RANK = 64


class FiLMLayer(nn.Module):
    def __init__(self, context_dim: int, target_dim: int, rank: int = FILM_RANK):
        super().__init__()
        for name, value in (("context_dim", context_dim), ("target_dim", target_dim), ("rank", rank)):
            if value < 1:
                raise ValueError(f"FiLMLayer: {name} must be >= 1, got {value}")
        self.context_dim = context_dim
        self.target_dim = target_dim
        self.down = nn.Linear(context_dim, rank, bias=False)
        self.up = nn.Linear(rank, 2 * target_dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def get_params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``context [B, context_dim]`` -> ``(gamma, beta)``, each ``[B, target_dim]``."""
        if context.ndim != 2 or context.shape[1] != self.context_dim:
            raise ValueError(f"FiLM context must be [B, {self.context_dim}], got {list(context.shape)}")
        delta, beta = self.up(nn.functional.silu(self.down(context))).chunk(2, dim=-1)  # [B, D] each
        return 1.0 + delta, beta

    def forward(self, l_tokens: Tensor, context: Tensor) -> Tensor:
        """``l_tokens [B, T, target_dim]``, ``context [B, context_dim]`` -> ``[B, T, target_dim]``."""
        if l_tokens.ndim != 3 or l_tokens.shape[2] != self.target_dim:
            raise ValueError(f"FiLM l_tokens must be [B, T, {self.target_dim}], got {list(l_tokens.shape)}")
        if context.shape[0] != l_tokens.shape[0]:
            raise ValueError(f"FiLM batch mismatch: l_tokens {l_tokens.shape[0]}, context {context.shape[0]}")
        gamma, beta = self.get_params(context)
        return torch.addcmul(beta.unsqueeze(1), gamma.unsqueeze(1), l_tokens)  # [B, T, D]
