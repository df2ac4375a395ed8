"""DINO projection head, shared by class and patch tokens.

Shapes: input ``[..., D]`` tokens -> ``[..., K]`` prototype logits (K = number of prototypes).
Layout and parameter names follow the reference: ``mlp.{0,2,4}`` (Linear, GELU, Linear, GELU,
Linear), an L2 normalisation, then a weight-normalised linear ``last_layer`` with parameters
``weight_g [K, 1]`` and ``weight_v [K, bottleneck]`` (no bias). The MLP is initialised with a
truncated normal (std 0.02) and zero biases; the prototype layer keeps ``nn.Linear``'s default
init with ``g = 1``, as in the reference code (``last_layer_init="trunc_normal"`` gives std 0.02).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g * v / ||v||`` (per output row)."""

    def __init__(self, in_dim: int, out_dim: int, device: torch.device | str | None = None,
                 init: str = "torch") -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1, device=device))
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim, device=device))
        if init == "torch":  # nn.Linear's default, which the reference keeps under weight_norm
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        elif init == "trunc_normal":
            nn.init.trunc_normal_(self.weight_v, std=0.02)
        else:
            raise ValueError(f"model.head_last_layer_init must be 'torch' or 'trunc_normal', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_dim] -> [..., out_dim]``."""
        v = self.weight_v
        w = v * (self.weight_g / torch.linalg.vector_norm(v, dim=1, keepdim=True))
        return F.linear(x, w.to(x.dtype))


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        device: torch.device | str | None = None,
        last_layer_init: str = "torch",
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, device=device),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim, device=device),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim, device=device),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, device=device, init=last_layer_init)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``[..., D]`` -> logits ``[..., K]``."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
