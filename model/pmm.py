"""Patch Matching Module: rebuilds current-frame patch tokens from an auxiliary frame.

Shapes: query tokens ``q [B, N, D]`` (student current-frame patch tokens, masked input, after
the final norm), auxiliary tokens ``a [B, M, D]`` (past or future frame patch tokens);
output ``[B, N, D]``. One block, weights shared between the past and the future call:

    h1 = LN(s * CrossAttention(query q, key/value a) + q)     (s = 4 in the reference)
    h2 = LN(SelfAttention(h1) + h1)
    out = LN(Linear(h2) + h2)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention with SDPA; ``context`` gives keys/values (self-attention if None)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PMM: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [B, N, D]``, ``context [B, M, D]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        ctx = x if context is None else context
        hd = d // self.num_heads
        q = self.q(x).view(b, n, self.num_heads, hd).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PatchMatchingModule(nn.Module):
    """Cross-attention to the auxiliary frame, self-attention, linear; each with residual + LN."""

    def __init__(self, dim: int, num_heads: int = 16, cross_scale: float = 4.0) -> None:
        super().__init__()
        self.cross_scale = cross_scale
        self.cross_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, q: Tensor, a: Tensor) -> Tensor:
        """``q [B, N, D]``, ``a [B, M, D]`` -> reconstructed tokens ``[B, N, D]``."""
        h1 = self.norm1(self.cross_scale * self.cross_attn(q, a) + q)
        h2 = self.norm2(self.self_attn(h1) + h1)
        return self.norm3(self.linear(h2) + h2)
