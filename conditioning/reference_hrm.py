"""A CPU-sized HRM (Wang et al. 2025, sapientinc/HRM ``models/hrm/hrm_act_v1.py``) reading the last T bars of a
symbol: the downstream model the conditioning is trained with and judged by (conditioning/value.py).

Structure, as HRM's (no code copied): tokens -> input embedding ``x [B, T, D]``; a high-level module H and a
low-level module L, each a stack of post-norm transformer blocks (self-attention over the T tokens, SwiGLU,
RMSNorm after each residual add), with recurrent states ``z_H, z_L [B, T, D]`` from fixed initial vectors::

    for h in 1..H_cycles:
        for l in 1..L_cycles:  z_L = L(z_L + FiLM(z_H + x))        # the L-module reads its input injection
        z_H = H(z_H + z_L)

and HRM's one-step gradient: every update but the last L and the last H step runs without gradient. The
prediction heads read ``z_H`` at the last token: the forward log realised variance (standardised) and the
logit of an up move. No ACT halting (one segment): the targets do not need a variable number of steps.

Conditioning modes (``MODES``), all through the same two hooks:

- ``none``: nothing; ``film_shuffled`` is ``film`` with contexts permuted across the batch (evaluation only);
- ``puzzle_emb``: a learned embedding per symbol id added to every token of ``x`` (HRM's ``puzzle_emb``, zero
  initialised as there; id 0 is "unknown", never trained: what an unseen symbol gets);
- ``film``: the ConditioningSystem's FiLM layer on the L-module's input injection, ``gamma * (z_H + x) + beta``
  per channel from the 256-d context (the ``target_dim = 512`` tokens the spec names);
- ``raw``: the raw conditioning inputs (and HAR's trailing variances) through one linear map added to every
  token: the inputs fed straight to the model, with no conditioning system (the strong baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MODES = ("none", "puzzle_emb", "film", "film_shuffled", "raw")


@dataclass(frozen=True)
class HrmSize:
    width: int = 512  # the L tokens' width (FiLM's target_dim)
    heads: int = 4
    expansion: float = 1.0  # SwiGLU hidden = expansion * width
    h_layers: int = 1
    l_layers: int = 1
    h_cycles: int = 2
    l_cycles: int = 2


def rms_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class Block(nn.Module):
    """Post-norm transformer block: ``x = norm(x + attn(x)); x = norm(x + swiglu(x))`` (non-causal attention)."""

    def __init__(self, width: int, heads: int, expansion: float):
        super().__init__()
        hidden = int(expansion * width)
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = rms_norm(x + self.out(attn))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return rms_norm(x + self.down(F.silu(gate) * up))


class ReasoningModule(nn.Module):
    """HRM's module: add the input injection, then the blocks."""

    def __init__(self, size: HrmSize, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(size.width, size.heads, size.expansion) for _ in range(layers))

    def forward(self, z: Tensor, injection: Tensor) -> Tensor:
        z = z + injection
        for block in self.blocks:
            z = block(z)
        return z


class ReferenceHRM(nn.Module):
    def __init__(self, n_token_features: int, seq_len: int, *, n_symbols: int = 0, raw_dim: int = 0, size=HrmSize()):
        super().__init__()
        self.size = size
        d = size.width
        self.embed = nn.Linear(n_token_features, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.register_buffer("h_init", torch.randn(d) * 0.02)
        self.register_buffer("l_init", torch.randn(d) * 0.02)
        self.H = ReasoningModule(size, size.h_layers)
        self.L = ReasoningModule(size, size.l_layers)
        self.head = nn.Linear(d, 2)  # [forward log RV (standardised), up-move logit]
        self.puzzle_emb = nn.Embedding(n_symbols + 1, d) if n_symbols else None
        if self.puzzle_emb is not None:
            nn.init.zeros_(self.puzzle_emb.weight)
        self.raw = nn.Linear(raw_dim, d) if raw_dim else None

    def forward(
        self,
        tokens: Tensor,
        *,
        symbol_ids: Tensor | None = None,
        raw: Tensor | None = None,
        film: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """``tokens [B, T, F]`` (standardised) -> ``[B, 2]``. ``symbol_ids [B]`` (puzzle_emb), ``raw [B, R]``,
        ``film``: ``[B, T, D] -> [B, T, D]`` (FiLM with each row's context bound)."""
        x = self.embed(tokens) + self.pos  # [B, T, D]
        if symbol_ids is not None:
            assert self.puzzle_emb is not None, "built without n_symbols"
            x = x + self.puzzle_emb(symbol_ids)[:, None]
        if raw is not None:
            assert self.raw is not None, "built without raw_dim"
            x = x + self.raw(raw)[:, None]
        inject = film or (lambda z: z)
        s = self.size
        z_h = self.get_buffer("h_init").expand_as(x)
        z_l = self.get_buffer("l_init").expand_as(x)
        with torch.no_grad():
            for h in range(s.h_cycles):
                for step in range(s.l_cycles):
                    if h < s.h_cycles - 1 or step < s.l_cycles - 1:
                        z_l = self.L(z_l, inject(z_h + x))
                if h < s.h_cycles - 1:
                    z_h = self.H(z_h, z_l)
        z_l = self.L(z_l, inject(z_h + x))  # one-step gradient
        z_h = self.H(z_h, z_l)
        return self.head(z_h[:, -1])
