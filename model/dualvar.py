"""DualVar (Zhang et al., BMVC 2021, "Inter-intra variant dual representations").

Re-implemented from the intent of ``model/simclr.py::SimCLR_TimeSeriesV4`` and ``pretrain.py``
of lzhangbj/DualVar (the released code does not run as published: its forward calls a
``calc_contrast_loss`` that the class does not define, among other bugs).

Shapes: ``batch["clips"] [B, 3, 3, F, H, W]`` holds c1, c2 (two clips of the video) and c3
(c1's frames, augmented again); ``batch["perm"] [B, S]`` the segment permutation of the shuffled
clip ŝ (its segment k is c3's segment ``perm[k]``); see ``pipeline/clips.py``. Pooled backbone
features are ``[N, C]``; clip embeddings ``[B, D]``; segment embeddings ``[B, S, d]``.

Objective (four backbone passes per video: c1, c2, c3 in one call, ŝ in a second):

- ``loss_clip``: NT-Xent between c1 and c2 clip embeddings (L2-normalised), negatives from the
  whole batch of every rank, tau 0.07.
- ``loss_tc``: the same NT-Xent where two clips' similarity is the mean over segment pairs
  (i, j) of ``<seg_i(c1), seg_j(c2)>`` (the dot product of the mean segment vectors), tau 0.07.
- ``loss_rank_c1``, ``loss_rank_c3``: shuffle-rank. ŝ's segment embeddings are put back in
  c3's order (p_1..p_S) and compared with the segments q_1..q_S of c1 (resp. c3): each anchor's
  positive is its counterpart, the 2S - 2 others are competitors;
  ``mean softplus(min((s_neg - s_pos) / theta, 5))``, theta 0.05.
- ``loss = loss_clip + loss_tc + 0.5 loss_rank_c1 + 0.5 loss_rank_c3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.contrastive import MethodParts, build_sgd, float32_loss, nt_xent, sgd_groups, unwrap
from model.video3d import build_backbone, convert_sync_bn, export_layout


@dataclass
class DualVarConfig:
    """Every constant of the paper's main setting (code = paper unless a comment says otherwise)."""

    arch: str = "r21d_vcop"  # code --net r21d: VCOP's R(2+1)D (1,1,1,1), 14.4 M parameters
    clip_dim: int = 128  # code --moco-dim; clip head C -> C -> 128 (ReLU, no BN)
    segments: int = 2  # code --n_series
    segment_dim: int = 64  # code --series_dim; segment head C -> C -> S * 64
    tau_clip: float = 0.07  # code --moco-t
    tau_tc: float = 0.07  # code --aligned_T
    rank_theta: float = 0.05  # code --shufflerank_theta
    rank_max: float = 5.0  # code: (diff / theta).clip(max=5.0) inside log(1 + exp(.))
    clip_weight: float = 1.0
    tc_weight: float = 1.0
    rank_weight: float = 0.5  # code: weight 0.5 on each of rank(c1, ŝ) and rank(c3, ŝ)
    sync_bn: bool = True  # code: convert_sync_batchnorm under DDP
    lr: float = 0.003  # code --lr, for base_batch videos per step; scaled linearly with the batch
    base_batch: int = 64  # code: 8 GPUs x --batch_size 8
    momentum: float = 0.9
    weight_decay: float = 1e-4  # code: on every parameter (biases and BN included)
    epochs: int = 200
    milestones: tuple[int, ...] = (120, 160)  # code --schedule: lr x gamma at these epochs
    gamma: float = 0.1
    grad_clip: float = 0.0  # code: no clipping

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.segments < 2:
            raise ValueError(f"dualvar.segments must be >= 2 (shuffle-rank needs a permutation), got {self.segments}")
        if min(self.tau_clip, self.tau_tc, self.rank_theta) <= 0:
            raise ValueError("dualvar.tau_clip, tau_tc and rank_theta must be > 0")
        if min(self.clip_weight, self.tc_weight, self.rank_weight) < 0:
            raise ValueError("dualvar loss weights must be >= 0")


def mlp(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (the code's two 1x1x1 convolutions on the pooled feature)."""
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c_out))


def shuffle_segments(clip: Tensor, perm: Tensor) -> Tensor:
    """``clip [B, 3, F, H, W]`` with its S equal time segments reordered: out segment k = in ``perm[:, k]``."""
    b, c, f, h, w = clip.shape
    s = perm.shape[1]
    if f % s:
        raise ValueError(f"dualvar: {f} frames do not split into {s} equal segments")
    seg = clip.reshape(b, c, s, f // s, h, w)
    idx = perm.view(b, 1, s, 1, 1, 1).expand_as(seg)
    return torch.gather(seg, 2, idx).reshape(b, c, f, h, w)


def restore_segments(seg: Tensor, perm: Tensor) -> Tensor:
    """Undo ``shuffle_segments`` on embeddings ``[B, S, d]``: out ``[:, perm[:, k]]`` = in ``[:, k]``."""
    return torch.scatter(seg, 1, perm[..., None].expand_as(seg), seg)


def shuffle_rank_loss(q: Tensor, p: Tensor, theta: float, max_ratio: float) -> Tensor:
    """Shuffle-rank on unit segment embeddings ``q, p [B, S, d]`` (q_i's positive is p_i and back).

    ``mean softplus(min((s_neg - s_pos) / theta, max_ratio))`` over every anchor of ``[q; p]`` and
    its 2S - 2 competitors (all other rows but itself and its counterpart).
    """
    with float32_loss(q):
        x = torch.cat([q, p], 1).float()  # [B, 2S, d]
        s = q.shape[1]
        sim = x @ x.transpose(1, 2)  # [B, 2S, 2S]
        rows = torch.arange(2 * s, device=q.device)
        pos_col = (rows + s) % (2 * s)
        pos = sim[:, rows, pos_col]  # [B, 2S]
        cols = rows[None, :]
        competitor = ((cols != rows[:, None]) & (cols != pos_col[:, None])).float()  # [2S, 2S]
        per_pair = F.softplus(((sim - pos[..., None]) / theta).clamp(max=max_ratio))
        return (per_pair * competitor).sum() / (q.shape[0] * competitor.sum())  # masks, not indexing: no host sync


class DualVarStudent(nn.Module):
    """Backbone + clip head + segment head; ``forward`` returns the loss terms of one batch."""

    def __init__(self, cfg: DualVarConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.arch)
        c = self.backbone.feature_dim
        self.clip_head = mlp(c, c, cfg.clip_dim)
        self.segment_head = mlp(c, c, cfg.segments * cfg.segment_dim)

    def segments_of(self, pooled: Tensor) -> Tensor:
        """Unit segment embeddings ``[N, S, d]`` of pooled features ``[N, C]``."""
        seg = self.segment_head(pooled).view(-1, self.cfg.segments, self.cfg.segment_dim)
        return F.normalize(seg.float(), dim=-1)

    def forward(self, batch: dict, teacher_out: None = None) -> dict[str, Tensor]:
        """Unweighted terms and the weighted ``loss`` (all float32 scalars)."""
        cfg = self.cfg
        clips = batch["clips"]
        b = clips.shape[0]
        if clips.dim() != 6 or clips.shape[1] != 3:
            raise ValueError(f"dualvar: batch['clips'] must be [B, 3, 3, F, H, W], got {tuple(clips.shape)}")
        perm = batch["perm"].to(clips.device, non_blocking=True).long()
        pooled = self.backbone(clips.flatten(0, 1))  # [3B, C], video-major
        shuffled = self.backbone(shuffle_segments(clips[:, 2], perm))  # [B, C]
        z = F.normalize(self.clip_head(pooled.view(b, 3, -1)[:, :2]).float(), dim=-1)  # c1, c2 only
        seg = self.segments_of(pooled).view(b, 3, cfg.segments, -1)
        restored = restore_segments(self.segments_of(shuffled), perm)
        terms = {
            "loss_clip": nt_xent(z[:, 0], z[:, 1], cfg.tau_clip),
            "loss_tc": nt_xent(seg[:, 0].mean(1), seg[:, 1].mean(1), cfg.tau_tc),
            "loss_rank_c1": shuffle_rank_loss(seg[:, 0], restored, cfg.rank_theta, cfg.rank_max),
            "loss_rank_c3": shuffle_rank_loss(seg[:, 2], restored, cfg.rank_theta, cfg.rank_max),
        }
        terms["loss"] = (cfg.clip_weight * terms["loss_clip"] + cfg.tc_weight * terms["loss_tc"]
                         + cfg.rank_weight * (terms["loss_rank_c1"] + terms["loss_rank_c3"]))
        return terms


def build(cfg: DualVarConfig, device: torch.device | str) -> MethodParts:
    """Student (SyncBN under DDP when ``sync_bn``), no teacher, one SGD group (wd on everything)."""
    student = convert_sync_bn(DualVarStudent(cfg), cfg.sync_bn).to(device)
    return MethodParts(student, None, sgd_groups(student, cfg.weight_decay))


def make_optimizer(cfg: DualVarConfig, parts: MethodParts) -> torch.optim.SGD:
    """SGD, momentum 0.9 (code)."""
    return build_sgd(parts.param_groups, cfg.momentum)


def lr_at(cfg: DualVarConfig, it: int, iters_per_epoch: int, total_batch: int) -> float:
    """Step schedule per epoch (code ``MultiStepLR``): ``lr * total_batch / base_batch * gamma^k``."""
    epoch = it // max(iters_per_epoch, 1)
    drops = sum(epoch >= m for m in cfg.milestones)
    return cfg.lr * total_batch / cfg.base_batch * cfg.gamma ** drops


def export_backbone(student: nn.Module) -> dict:
    """``{"backbone": state_dict, "arch": ..., "method": "dualvar"}`` (see ``model/video3d.py``)."""
    return export_layout(unwrap(student).backbone, "dualvar")
