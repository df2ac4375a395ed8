"""Patch Matching Module: rebuilds current-frame patch tokens from an auxiliary frame.

Shapes: query tokens ``q [B, N, D]`` (student current-frame patch tokens, masked input, after
the final norm), auxiliary tokens ``a [B, M, D]`` (past or future frame patch tokens);
output ``[B, N, D]``. One block, weights shared between the past and the future call:

    h1 = LN(s * CrossAttention(query q, key/value a) + q)     (s = 4 in the reference)
    h2 = LN(SelfAttention(h1) + h1)
    out = LN(Linear(h2) + h2)

As in the reference code the attentions are ``nn.MultiheadAttention`` (so parameter names
``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``), initialised with PyTorch's defaults, and
the LayerNorms use eps 1e-5 (``init="torch"``). ``init="trunc_normal"`` gives every weight a
truncated normal (std 0.02) and zero biases, this project's earlier choice.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn


class PatchMatchingModule(nn.Module):
    """Cross-attention to the auxiliary frame, self-attention, linear; each with residual + LN."""

    def __init__(self, dim: int, num_heads: int = 16, cross_scale: float = 4.0,
                 init: Literal["torch", "trunc_normal"] = "torch", ln_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PMM: width {dim} is not divisible by {num_heads} heads")
        self.cross_scale = cross_scale
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.linear = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim, eps=ln_eps)
        if init == "trunc_normal":
            for name, p in self.named_parameters():
                if "norm" in name:
                    continue
                if p.ndim == 2:
                    nn.init.trunc_normal_(p, std=0.02)
                else:
                    nn.init.zeros_(p)
        elif init != "torch":
            raise ValueError(f"model.pmm_init must be 'torch' or 'trunc_normal', got {init!r}")

    def forward(self, q: Tensor, a: Tensor) -> Tensor:
        """``q [B, N, D]``, ``a [B, M, D]`` -> reconstructed tokens ``[B, N, D]``."""
        cross = self.cross_attn(q, a, a, need_weights=False)[0]
        h1 = self.norm1(self.cross_scale * cross + q)
        h2 = self.norm2(self.self_attn(h1, h1, h1, need_weights=False)[0] + h1)
        return self.norm3(self.linear(h2) + h2)
