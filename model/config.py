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
    depth: int = 0  # 0 = the factory's depth (12 for ViT-S/B, 4 for tiny)
    num_register_tokens: int = 4
    layerscale: float = 1e-5
    drop_path_rate: float = 0.1  # uniform over blocks
    head_n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    pmm_heads: int = 16
    pmm_cross_scale: float = 4.0  # h1 = LN(scale * CrossAttn(q, a) + q)
    student_temp: float = 0.1
    centre_momentum: float = 0.9
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
        if self.img_size % 16:
            raise ValueError(f"model.img_size must be a multiple of the patch size 16, got {self.img_size}")
        if min(self.head_n_prototypes, self.head_hidden_dim, self.head_bottleneck_dim, self.pmm_heads) < 1:
            raise ValueError("model.head_* sizes and model.pmm_heads must be >= 1")
