"""CSTP / STOR (Zhang et al., AAAI 2022, "Contrastive spatio-temporal pretext learning").

Follows ``models/pace/r21d_byol.py::R21DBYOL`` and ``main_byol.py`` of KT27-A/CSTP.

Shapes: ``batch["clips"] [B, 2, 3, F, H, W]``; labels ``spatial``, ``temporal``, ``pb`` ``[B]`` and
``rot [B, 2]`` (int64 classes, see ``pipeline/clips.py``). Pooled features ``y [B, C]``,
projections and predictions ``[B, D]``, logits ``[B, K]``.

Objective, per video (two online and two target backbone passes):

- ``loss_byol``: BYOL between the clips, symmetric ``(2 - 2 cos(q1, z2)) + (2 - 2 cos(q2, z1))``
  where q = predictor(projector(y)) online and z = projector(y) of the EMA target (0.996).
- ``loss_spatial``, ``loss_temporal``: 5-way overlap-rate CE from an MLP on ``[y1, y2]``.
- ``loss_pb1``, ``loss_pb2``, ``loss_rot1``, ``loss_rot2``: playback-rate and rotation CE of each
  clip from a shared MLP per task.
- ``loss = 0.1 loss_byol + loss_spatial + loss_temporal + loss_pb1 + loss_pb2 + loss_rot1 + loss_rot2``.

The trainer calls ``teacher(batch)`` for the target projections and ``teacher.update(student,
it, total)`` after each optimiser step. (The code updates the target at the start of each
forward, before the target pass: the same sequence of target weights, shifted by one update.)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.contrastive import (
    MethodParts,
    build_sgd,
    byol_loss,
    cosine_momentum,
    ema_update_,
    float32_loss,
    sgd_groups,
    unwrap,
)
from model.schedules import warmup_cosine
from model.video3d import build_backbone, convert_sync_bn, export_layout


@dataclass
class CSTPConfig:
    """Every constant of the R(2+1)D Kinetics-400 setting (code script ``run_kin400_r21d_*``)."""

    arch: str = "r21d_vcop"  # code --model_name r21d_byol --model_depth 1
    proj_hidden: int = 4096  # projector and predictor C -> 4096 (BN, ReLU) -> 512
    proj_dim: int = 512
    overlap_classes: int = 5  # rates {1.0, 0.8, 0.6, 0.4, 0.2}; heads 2C -> 2C (BN, ReLU) -> 5
    pb_classes: int = 5  # code Linear(512, 5) with labels 0..3; paper: 4-way (set 4)
    rot_classes: int = 5  # code Linear(512, 5) with labels 0..3; paper: 4-way (set 4)
    target_momentum: float = 0.996
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # code constant; BYOL paper cosine -> 1
    target_init: Literal["independent", "copy"] = "independent"  # code: separately initialised target; BYOL: copy
    init: Literal["glorot", "torch"] = "glorot"  # code: glorot-uniform Linear/Conv3d/BN weights (BN too)
    byol_weight: float = 0.1  # code --loss_weight 0.1 1 1 1 1
    spatial_weight: float = 1.0
    temporal_weight: float = 1.0
    pb_weight: float = 1.0  # on each clip's CE
    rot_weight: float = 1.0  # on each clip's CE
    sync_bn: bool = True  # code --sync_bn 1 (whole model, target included)
    lr: float = 0.09  # code --learning_rate, for base_batch clips pairs per step; scaled linearly
    base_batch: int = 128  # code --batch_size 128 in total
    min_lr: float = 1e-5  # code: warm-up starts and cosine ends here
    warmup_epochs: int = 150  # code: 0.5 * n_epochs
    epochs: int = 300
    per_epoch_schedule: bool = True  # code steps the scheduler once per epoch; False: per iteration
    momentum: float = 0.9
    weight_decay: float = 5e-4  # code: on every parameter
    grad_clip: float = 18.0  # code: clip_grad_norm_(model.parameters(), 18)

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if not 0.0 <= self.target_momentum <= 1.0:
            raise ValueError(f"cstp.target_momentum must be in [0, 1], got {self.target_momentum}")
        if self.pb_classes < 4 or self.rot_classes < 4 or self.overlap_classes < 2:
            raise ValueError("cstp.pb_classes and rot_classes must be >= 4 (labels 0..3), overlap_classes >= 2")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"cstp.warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")


def bn_mlp(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (projector, predictor and the four heads)."""
    return nn.Sequential(nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, c_out))


@torch.no_grad()
def glorot_init_(module: nn.Module) -> None:
    """The code's init: weights of Linear, Conv3d and BatchNorm (1d/3d) ~ U(+-sqrt(6 / (fan_in + fan_out))).

    For a 1-D BN weight the code takes fan_in = fan_out = size / 2, i.e. bound sqrt(6 / size).
    Biases keep torch's defaults.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm3d)):
            w = m.weight
            if w.dim() < 2:
                fan_sum = 2 * (w.shape[0] // 2)
            else:
                field = w[0][0].numel()
                fan_sum = (w.shape[1] + w.shape[0]) * field
            bound = math.sqrt(6.0 / max(fan_sum, 1))
            w.uniform_(-bound, bound)


class OnlineNet(nn.Module):
    """Backbone + projector: the part the target copies."""

    def __init__(self, cfg: CSTPConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.arch)
        self.projector = bn_mlp(self.backbone.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        if cfg.init == "glorot":
            glorot_init_(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(pooled [N, C], projection [N, D])``."""
        y = self.backbone(x)
        return y, self.projector(y)


class CSTPStudent(nn.Module):
    """Online network, predictor and the overlap / playback / rotation heads."""

    def __init__(self, cfg: CSTPConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.online = OnlineNet(cfg)
        c = self.online.backbone.feature_dim
        self.predictor = bn_mlp(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        self.overlap_spa = bn_mlp(2 * c, 2 * c, cfg.overlap_classes)
        self.overlap_tem = bn_mlp(2 * c, 2 * c, cfg.overlap_classes)
        self.pb_cls = bn_mlp(c, c, cfg.pb_classes)
        self.rotate_cls = bn_mlp(c, c, cfg.rot_classes)
        if cfg.init == "glorot":
            for m in (self.predictor, self.overlap_spa, self.overlap_tem, self.pb_cls, self.rotate_cls):
                glorot_init_(m)

    def forward(self, batch: dict, teacher_out: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """Unweighted terms and the weighted ``loss``; ``teacher_out`` = ``CSTPTarget(batch)``."""
        if teacher_out is None:
            raise ValueError("cstp: the student needs the target's projections (teacher_out=teacher(batch))")
        cfg, clips = self.cfg, batch["clips"]
        if clips.dim() != 6 or clips.shape[1] != 2:
            raise ValueError(f"cstp: batch['clips'] must be [B, 2, 3, F, H, W], got {tuple(clips.shape)}")
        y1, h1 = self.online(clips[:, 0])  # two calls, as the code (BN statistics per clip)
        y2, h2 = self.online(clips[:, 1])
        cat = torch.cat([y1, y2], 1)
        dev = clips.device

        def ce(logits: Tensor, key: str, col: int | None = None) -> Tensor:
            target = batch[key].to(dev, non_blocking=True).long()
            target = target if col is None else target[:, col]
            with float32_loss(logits):
                return F.cross_entropy(logits.float(), target)

        terms = {
            "loss_byol": byol_loss(self.predictor(h1), self.predictor(h2), teacher_out["z1"], teacher_out["z2"]),
            "loss_spatial": ce(self.overlap_spa(cat), "spatial"),
            "loss_temporal": ce(self.overlap_tem(cat), "temporal"),
            "loss_pb1": ce(self.pb_cls(y1), "pb"),
            "loss_pb2": ce(self.pb_cls(y2), "pb"),
            "loss_rot1": ce(self.rotate_cls(y1), "rot", 0),
            "loss_rot2": ce(self.rotate_cls(y2), "rot", 1),
        }
        terms["loss"] = (cfg.byol_weight * terms["loss_byol"] + cfg.spatial_weight * terms["loss_spatial"]
                         + cfg.temporal_weight * terms["loss_temporal"]
                         + cfg.pb_weight * (terms["loss_pb1"] + terms["loss_pb2"])
                         + cfg.rot_weight * (terms["loss_rot1"] + terms["loss_rot2"]))
        return terms


class CSTPTarget(nn.Module):
    """EMA target (backbone + projector), never trained by gradient."""

    def __init__(self, cfg: CSTPConfig, online: OnlineNet | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = copy.deepcopy(online) if online is not None else OnlineNet(cfg)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Target projections ``{"z1", "z2"}`` ``[B, D]`` of the two clips."""
        clips = batch["clips"]
        return {"z1": self.net(clips[:, 0])[1], "z2": self.net(clips[:, 1])[1]}

    def momentum_at(self, it: int, total_iters: int) -> float:
        """Constant (code) or BYOL's cosine from ``target_momentum`` to 1."""
        m = self.cfg.target_momentum
        return m if self.cfg.momentum_schedule == "constant" else cosine_momentum(it, total_iters, m)

    @torch.no_grad()
    def update(self, student: nn.Module, it: int, total_iters: int) -> None:
        """EMA of the online backbone + projector parameters (buffers are the target's own, as in the code)."""
        ema_update_(self.net.parameters(), unwrap(student).online.parameters(), self.momentum_at(it, total_iters))


def build(cfg: CSTPConfig, device: torch.device | str) -> MethodParts:
    """Student and target (SyncBN under DDP when ``sync_bn``), one SGD group over the student."""
    student = CSTPStudent(cfg)
    target = CSTPTarget(cfg, student.online if cfg.target_init == "copy" else None)
    student = convert_sync_bn(student, cfg.sync_bn).to(device)
    target = convert_sync_bn(target, cfg.sync_bn).to(device)
    return MethodParts(student, target, sgd_groups(student, cfg.weight_decay))


def make_optimizer(cfg: CSTPConfig, parts: MethodParts) -> torch.optim.SGD:
    """SGD, momentum 0.9 (code)."""
    return build_sgd(parts.param_groups, cfg.momentum)


def lr_at(cfg: CSTPConfig, it: int, iters_per_epoch: int, total_batch: int) -> float:
    """``min_lr`` -> ``lr`` linearly over ``warmup_epochs``, then cosine to ``min_lr`` at ``epochs``
    (code ``CosineAnnealingWarmupRestarts``, one cycle); the peak scales with the batch."""
    ipe = max(iters_per_epoch, 1)
    peak = cfg.lr * total_batch / cfg.base_batch
    if cfg.per_epoch_schedule:
        return warmup_cosine(it // ipe, cfg.epochs, cfg.warmup_epochs, peak, cfg.min_lr, start=cfg.min_lr)
    return warmup_cosine(it, cfg.epochs * ipe, cfg.warmup_epochs * ipe, peak, cfg.min_lr, start=cfg.min_lr)


def export_backbone(student: nn.Module) -> dict:
    """The online backbone: ``{"backbone": state_dict, "arch": ..., "method": "cstp"}``."""
    return export_layout(unwrap(student).online.backbone, "cstp")
