"""Vision Transformer backbone for T-CoRe, built on timm's ``VisionTransformer``.

Shapes: images are ``[B, 3, H, W]``; tokens are ``[B, T, D]`` with the token order
``[cls, registers (R), patches (N = H/p * W/p, row-major)]``; masks are ``[B, N]`` bool
(True = patch replaced by the mask token).

Differences from a stock timm ViT, matching the reference (DINOv2-style) layout so its
state dict keys are ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed.*``, ``blocks.*``, ``norm.*``:

- ``pos_embed`` covers the class token and the patch grid of ``img_size`` (no entry for the
  registers) and is bicubically resized (with antialias, as the reference) to the grid of any other
  input size;
- register tokens are inserted between the class token and the patches, after the
  position embedding;
- a learnable ``mask_token`` replaces masked patch embeddings before the position embedding;
- drop-path is the same in every block (not a linear ramp).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class TCoReViT(VisionTransformer):
    """timm ViT with register tokens, a mask token and resizable position embeddings."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_registers: int = 4,
        layerscale_init: float = 1e-5,
        drop_path: float = 0.0,
        pos_antialias: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            init_values=layerscale_init,
            class_token=True,
            no_embed_class=False,
            reg_tokens=0,
            dynamic_img_size=True,
            device=device,
        )
        self.patch_size = patch_size
        self.img_size = img_size
        self.pos_antialias = pos_antialias
        self.num_registers = num_registers
        self.num_prefix_tokens = 1 + num_registers
        if num_registers > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, embed_dim, device=device))
            nn.init.normal_(self.register_tokens, std=1e-6)
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim, device=device))
        for blk in self.blocks:  # uniform drop-path, as in the reference
            blk.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
            blk.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def interpolate_pos_embed(self, h: int, w: int) -> Tensor:
        """Position embedding ``[1, 1 + h*w, D]`` for an ``h x w`` patch grid (bicubic resize)."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(math.isqrt(n))
        if side * side == n and side == h == w:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        grid = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=self.pos_antialias)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def _check_size(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}"
            )

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images ``[B,3,H,W]`` (+ masks ``[B,N]``) -> tokens ``[B, 1+R+N, D]``."""
        self._check_size(x)
        x = self.patch_embed(x)  # [B, h, w, D]
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_embed(h, w)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor]:  # type: ignore[override]
        """Final-norm tokens: ``cls [B,D]``, ``registers [B,R,D]``, ``patch [B,N,D]``."""
        x = self.prepare_tokens(x, masks)
        x = self.blocks(x)
        x = self.norm(x)
        r = self.num_prefix_tokens
        return {"cls": x[:, 0], "registers": x[:, 1:r], "patch": x[:, r:]}

    def forward(self, x: Tensor, masks: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Final-norm class token ``[B, D]``."""
        return self.forward_features(x, masks)["cls"]

    def get_patch_tokens(self, x: Tensor) -> Tensor:
        """Last-layer final-norm patch tokens ``[B, H/p, W/p, D]`` (class and registers dropped)."""
        self._check_size(x)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patch = self.forward_features(x)["patch"]
        return patch.reshape(x.shape[0], h, w, patch.shape[-1])


def vit_tiny(**kwargs) -> TCoReViT:
    """Tiny ViT for CPU tests and demos: width 128, depth 4, 2 heads, patch 16."""
    cfg = dict(img_size=64, patch_size=16, embed_dim=128, depth=4, num_heads=2, mlp_ratio=4.0)
    return TCoReViT(**(cfg | kwargs))


def vit_small(**kwargs) -> TCoReViT:
    """ViT-S/16: width 384, depth 12, 6 heads, 4 registers."""
    cfg = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)
    return TCoReViT(**(cfg | kwargs))


def vit_base(**kwargs) -> TCoReViT:
    """ViT-B/16: width 768, depth 12, 12 heads, 4 registers."""
    cfg = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
    return TCoReViT(**(cfg | kwargs))


ARCHS = {"vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base}
