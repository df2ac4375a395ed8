"""The T-CoRe student (backbone + shared DINO head + PMM) and its loss computation.

Shapes: views are flattened crop-major, so crop ``i`` of image ``b`` is row ``i * B + b``:
current global crops ``[G*B, 3, H, W]``, local crops ``[L*B, 3, h, w]``, past and future views
``[2*B, 3, H, W]`` each (view ``i`` is paired with current crop ``i``). Tokens are ``[rows, N, D]``;
logits ``[..., K]``; masked patches are the fixed slot list of ``model/masks.py`` (``[M]``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.head import DINOHead
from model.losses import dino_loss, koleo_loss, masked_patch_loss, past_future_loss
from model.masks import MaskBatch
from model.pmm import PatchMatchingModule
from model.vit import ARCHS, TCoReViT


class Views(NamedTuple):
    """One batch of crops, flattened crop-major (see the module docstring)."""

    current_global: Tensor  # [G*B, 3, H, W]
    current_local: Tensor | None  # [L*B, 3, h, w]
    past: Tensor  # [2*B, 3, H, W]
    future: Tensor  # [2*B, 3, H, W]
    n_global: int
    n_local: int


def views_from_batch(batch: dict, dtype: torch.dtype | None = None) -> Views:
    """Loader batch (``[B, V, 3, H, W]`` tensors) -> crop-major ``Views``."""

    def flat(x: Tensor) -> Tensor:
        x = x.transpose(0, 1).reshape(-1, *x.shape[2:])
        return x if dtype is None else x.to(dtype)

    g, loc = batch["current_global"], batch.get("current_local")
    n_local = 0 if loc is None else loc.shape[1]
    return Views(flat(g), flat(loc) if n_local else None, flat(batch["past"]), flat(batch["future"]),
                 g.shape[1], n_local)


def build_backbone(cfg: ModelConfig, device: torch.device | str | None = None) -> TCoReViT:
    """The configured ViT (``arch`` factory + overrides)."""
    kwargs = dict(img_size=cfg.img_size, num_registers=cfg.num_register_tokens, layerscale_init=cfg.layerscale,
                  drop_path=cfg.drop_path_rate, pos_antialias=cfg.pos_embed_antialias, device=device)
    for key in ("depth", "embed_dim", "num_heads"):
        if getattr(cfg, key) > 0:
            kwargs[key] = getattr(cfg, key)
    kwargs["patch_size"] = cfg.patch_size
    return ARCHS[cfg.arch](**kwargs)


class TCoReStudent(nn.Module):
    """Student networks; ``forward`` returns the weighted loss terms of one batch."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg, device)
        dim = self.backbone.embed_dim
        self.dino_head = DINOHead(dim, cfg.head_n_prototypes, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                                  device=device, last_layer_init=cfg.head_last_layer_init)
        self.pmm = PatchMatchingModule(dim, cfg.pmm_heads, cfg.pmm_cross_scale, cfg.pmm_init,
                                       cfg.pmm_ln_eps).to(device)

    def forward(self, views: Views, mb: MaskBatch, teacher_cls: Tensor, teacher_patch: Tensor) -> dict[str, Tensor]:
        """Loss terms (unweighted) and ``loss`` (weighted total).

        ``teacher_cls [G, B, K]`` and ``teacher_patch [M, K]`` are the teacher's centred targets.
        """
        cfg, g = self.cfg, views.n_global
        cur = self.backbone.forward_features(views.current_global, mb.masks)
        c = cur["cls"].shape[0]
        local_cls = self.backbone(views.current_local) if views.current_local is not None else None
        with torch.no_grad():
            aux = self.backbone.forward_features(torch.cat([views.past, views.future]))["patch"]
        rec = self.pmm(torch.cat([cur["patch"], cur["patch"]]), aux)  # [2C, N, D]: past then future
        rows = torch.cat([mb.slot_crop, mb.slot_crop + c])
        rec_slots = rec[rows, torch.cat([mb.slot_pos, mb.slot_pos])]  # [2M, D]
        parts = [cur["cls"]] + ([local_cls] if local_cls is not None else []) + [rec_slots]
        logits = self.dino_head(torch.cat(parts))
        m = mb.slot_crop.shape[0]
        s_global = logits[:c].view(g, c // g, -1)
        s_local = logits[c:-2 * m].view(views.n_local, c // g, -1) if local_cls is not None else None
        rec_past, rec_future = logits[-2 * m:-m], logits[-m:]
        t = cfg.student_temp
        terms = {
            "loss_dino": dino_loss(s_global, s_local, teacher_cls, t),
            "loss_koleo": sum(koleo_loss(x) for x in cur["cls"].view(g, c // g, -1)),
            "loss_pt": masked_patch_loss(rec_past, teacher_patch, mb.slot_weight, c, t),
            "loss_ft": masked_patch_loss(rec_future, teacher_patch, mb.slot_weight, c, t),
            "loss_pf": past_future_loss(rec_past, rec_future, mb.slot_valid),
        }
        terms["loss"] = (cfg.dino_loss_weight * terms["loss_dino"] + cfg.koleo_loss_weight * terms["loss_koleo"]
                         + cfg.pt_loss_weight * terms["loss_pt"] + cfg.ft_loss_weight * terms["loss_ft"]
                         + cfg.pf_loss_weight * terms["loss_pf"])
        return terms
