"""Configuration of the T-CoRe networks and losses (the ``model:`` section of a run config).

Names follow the reference (DINOv2-style) config where it has one. Schedules and optimiser
settings live in the trainer's ``train:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    """Backbone, DINO head, PMM, masking and loss settings."""

    arch: Literal["vit_tiny", "vit_small", "vit_base"] = "vit_small"
    img_size: int = 224  # grid of the learned position embedding (img_size / patch_size)
    patch_size: int = 16
    embed_dim: int = 0  # 0 = the factory's width (384 ViT-S, 768 ViT-B, 128 tiny)
    num_heads: int = 0  # 0 = the factory's heads
    depth: int = 0  # 0 = the factory's depth (12 for ViT-S/B, 4 for tiny)
    num_register_tokens: int = 4
    layerscale: float = 1e-5
    drop_path_rate: float = 0.1  # uniform over blocks
    head_n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    # prototype layer init: "torch" = nn.Linear's default (row norm ~0.58) as the reference code;
    # "trunc_normal" = std 0.02 (row norm ~0.02·sqrt(bottleneck)), this project's earlier choice
    head_last_layer_init: Literal["torch", "trunc_normal"] = "torch"
    pos_embed_antialias: bool = True  # bicubic position-embedding resize with antialias (reference code)
    pmm_heads: int = 16
    pmm_cross_scale: float = 4.0  # h1 = LN(scale * CrossAttn(q, a) + q)
    pmm_init: Literal["torch", "trunc_normal"] = "torch"  # "torch" = PyTorch defaults (reference code)
    pmm_ln_eps: float = 1e-5  # reference code: nn.LayerNorm's default
    student_temp: float = 0.1
    centre_momentum: float = 0.9
    # teacher targets: "centre" = softmax((logits - EMA centre) / T) as the T-CoRe code;
    # "sinkhorn" = Sinkhorn-Knopp over the global batch (DINOv2's option), no centre used
    centering: Literal["centre", "sinkhorn"] = "centre"
    dino_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    pt_loss_weight: float = 0.8
    ft_loss_weight: float = 0.8
    pf_loss_weight: float = 20.0
    mask_sample_probability: float = 0.5  # share of global crops that are masked
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)
    mask_min_block: int = 4  # patches per block, at least
    mask_max_block_ratio: float = 0.5  # a block covers at most this share of the grid
    mask_block_aspect: tuple[float, float] = (0.3, 1 / 0.3)

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        lo, hi = self.mask_ratio_min_max
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"model.mask_ratio_min_max: need 0 <= min <= max < 1, got {self.mask_ratio_min_max}")
        if not 0.0 <= self.mask_sample_probability <= 1.0:
            raise ValueError("model.mask_sample_probability must be in [0, 1]")
        if self.mask_min_block < 1:
            raise ValueError(f"model.mask_min_block must be >= 1, got {self.mask_min_block}")
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ValueError(f"model.img_size must be a multiple of model.patch_size {self.patch_size}, "
                             f"got {self.img_size}")
        if self.embed_dim and self.num_heads and self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by model.num_heads {self.num_heads}")
        if min(self.head_n_prototypes, self.head_hidden_dim, self.head_bottleneck_dim, self.pmm_heads) < 1:
            raise ValueError("model.head_* sizes and model.pmm_heads must be >= 1")
