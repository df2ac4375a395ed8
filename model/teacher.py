"""EMA teacher: backbone + DINO head copied from the student, updated by momentum, with centres.

Shapes: global crops ``[C, 3, H, W]`` (C = G * B, crop-major); class logits ``[G, B, K]``;
patch logits at the mask slots ``[M, K]`` (see ``model/masks.py``). The teacher runs in eval
mode (no drop-path) and without gradients.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from model.losses import centred_softmax, sinkhorn_knopp
from model.masks import MaskBatch


def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _entropy(p: Tensor) -> Tensor:
    """Entropy (nats) of each row of ``[N, K]`` probabilities."""
    p = p.float()
    return -(p * torch.log(p.clamp(min=1e-12))).sum(-1)


def collapse_stats(targets: Tensor, cls_tokens: Tensor, patch_targets: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Collapse monitors, as float32 scalars (no host synchronisation).

    ``stat_teacher_entropy``: mean entropy (nats) of the teacher's class-token targets ``[C, K]``;
    it tends to ln K when the targets turn uniform, to 0 when one prototype takes every input.
    ``stat_patch_entropy``: the same for the masked-patch targets ``[M, K]`` (valid slots only).
    ``stat_cls_std``: std over the batch of the L2-normalised class tokens ``[C, D]``, averaged
    over dimensions (about 1/sqrt(D) for well-spread features, towards 0 when they collapse).
    """
    z = F.normalize(cls_tokens.float(), dim=-1)
    patch = (_entropy(patch_targets) * valid).sum() / valid.sum().clamp(min=1.0)
    return {"stat_teacher_entropy": _entropy(targets).mean(), "stat_patch_entropy": patch,
            "stat_cls_std": z.std(dim=0).mean()}


class Teacher(nn.Module):
    """EMA copy of the student's backbone and head, plus the two centres."""

    def __init__(self, backbone: nn.Module, head: nn.Module, n_prototypes: int, centre_momentum: float,
                 centering: str = "centre") -> None:
        super().__init__()
        if centering not in ("centre", "sinkhorn"):
            raise ValueError(f"model.centering must be 'centre' or 'sinkhorn', got {centering!r}")
        self.centering = centering
        self.backbone = copy.deepcopy(backbone).eval()
        self.dino_head = copy.deepcopy(head).eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.centre_momentum = centre_momentum
        dev = next(self.parameters()).device
        self.register_buffer("cls_centre", torch.zeros(1, n_prototypes, device=dev))
        self.register_buffer("patch_centre", torch.zeros(1, n_prototypes, device=dev))
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """The teacher always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def ema_update(self, student_backbone: nn.Module, student_head: nn.Module, momentum: float) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter (foreach kernels)."""
        t = list(self.backbone.parameters()) + list(self.dino_head.parameters())
        s = list(student_backbone.parameters()) + list(student_head.parameters())
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, [p.detach() for p in s], alpha=1.0 - momentum)

    @torch.no_grad()
    def forward(self, globals_: Tensor, slot_crop: Tensor, slot_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Float32 head logits of the class tokens ``[C, K]`` and of the masked slots ``[M, K]``,
        and the final-norm class tokens ``[C, D]``."""
        feats = self.backbone.forward_features(globals_)
        patch = feats["patch"][slot_crop, slot_pos]  # [M, D]
        logits = self.dino_head(torch.cat([feats["cls"], patch], dim=0)).float()
        c = feats["cls"].shape[0]
        return logits[:c], logits[c:], feats["cls"]

    @torch.no_grad()
    def targets(self, globals_: Tensor, mb: MaskBatch, n_views: int, temp: float
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Centred targets for class tokens ``[G, B, K]`` and masked patches ``[M, K]``, and collapse
        statistics (``collapse_stats``); updates the centres."""
        cls_logits, patch_logits, cls_tokens = self(globals_, mb.slot_crop, mb.slot_pos)
        c = cls_logits.shape[0]
        if self.centering == "sinkhorn":
            cls_t = sinkhorn_knopp(cls_logits, temp)
            patch_t = sinkhorn_knopp(patch_logits, temp, weight=mb.slot_valid)
        else:
            cls_t = centred_softmax(cls_logits, self.cls_centre, temp)
            patch_t = centred_softmax(patch_logits, self.patch_centre, temp)
        stats = collapse_stats(cls_t, cls_tokens, patch_t, mb.slot_valid)
        self.update_centres(cls_logits, patch_logits, mb.slot_valid)
        return cls_t.view(n_views, c // n_views, -1), patch_t, stats

    @torch.no_grad()
    def update_centres(self, cls_logits: Tensor, patch_logits: Tensor, valid: Tensor) -> None:
        """EMA of the batch means (over all ranks): all class tokens; valid masked patch slots."""
        k = cls_logits.shape[-1]
        stats = torch.cat([
            cls_logits.sum(0),
            (patch_logits * valid[:, None]).sum(0),
            valid.new_full((1,), float(cls_logits.shape[0])),
            valid.sum().view(1),
        ])
        stats = _all_reduce_sum(stats)
        cls_mean = stats[:k] / stats[2 * k]
        patch_mean = stats[k:2 * k] / stats[2 * k + 1].clamp(min=1.0)
        m = self.centre_momentum
        self.cls_centre.mul_(m).add_(cls_mean[None], alpha=1 - m)
        # no masked patch anywhere -> keep the centre (weight of the new mean is 0)
        w = (1 - m) * (stats[2 * k + 1] > 0).float()
        self.patch_centre.mul_(1 - w).add_(patch_mean[None] * w)
