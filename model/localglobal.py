"""Controllable local-global augmentations (Qian, Lin, See, Li; arXiv 2203.16632): our reading.

No official code exists and the paper's loss forms, weights and backbone are unconfirmed. This
module implements the four components its abstract names, with the choices below (each can be
switched off by setting its weight to 0, which also leaves its head out of the model):

- **local clips and a global video**: one global clip spread over the whole video and M dense
  local clips whose time windows and boxes in the global clip are known exactly
  (``pipeline/clips.py``, ``LocalGlobalSampling``).
- ``loss_instance`` (base contrast, our addition so the components can be measured against it):
  InfoNCE from each local clip to the global clip of its video, negatives = the global clips of
  every rank, tau 0.1.
- ``loss_region`` (soft spatio-temporal region contrast): the global clip's feature map is
  RoI-pooled at each local clip's time window and box and at a fixed t x h x w grid of cells;
  each local clip's embedding is contrasted with all pooled regions of all videos, the target
  distribution being the spatio-temporal IoU of the local clip's window with each region of its
  own video (normalised; its own window has IoU 1, other videos 0).
- ``loss_mi`` (adversarial mutual-information minimisation): a discriminator on the globally
  pooled first-stage ("early") features of a (local, global) pair tells same-video pairs from
  pairs with another video's global clip (binary cross-entropy, a Jensen-Shannon MI estimate);
  a gradient-reversal layer makes the backbone maximise it, i.e. remove the low-level
  information that local and global clips of a video share.
- ``loss_order`` (local-global temporal order): an MLP on ``[global, local_1..local_M]`` pooled
  features predicts the permutation class of the local clips' time order (M! classes).

Shapes: ``batch["global"] [B, 3, Fg, Hg, Wg]``, ``batch["local"] [B, M, 3, Fl, Hl, Wl]``,
``batch["local_boxes"] [B, M, 4]`` (x0, y0, x1, y1) and ``batch["local_times"] [B, M, 2]``
(t0, t1), both normalised to the global clip, ``batch["order"] [B]``. Regions are ``[B, R, 6]``
(t0, t1, x0, y0, x1, y1) normalised; the feature map is ``[B, C, t, h, w]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from model.contrastive import (
    MethodParts,
    build_sgd,
    contrastive_ce,
    float32_loss,
    gather_with_grad,
    rank_and_world,
    sgd_groups,
    unwrap,
)
from model.schedules import warmup_cosine
from model.video3d import build_backbone, convert_sync_bn, export_layout


@dataclass
class LocalGlobalConfig:
    """Our reading (every value here is a choice, not a published constant)."""

    arch: str = "r3d18"
    num_local: int = 3  # M (must match the sampler's num_local)
    proj_hidden: int = 512  # projection heads C -> 512 (BN, ReLU) -> 128
    proj_dim: int = 128
    tau: float = 0.1
    instance_weight: float = 1.0
    region_weight: float = 1.0
    region_grid: tuple[int, int, int] = (2, 2, 2)  # extra candidate regions: t x h x w cells of the global clip
    roi_size: int = 2  # RoIAlign output (averaged to one vector per region)
    mi_weight: float = 0.1
    mi_hidden: int = 256
    grl_lambda: float = 1.0  # gradient-reversal factor into the backbone
    order_weight: float = 0.5
    order_hidden: int = 512
    sync_bn: bool = True
    lr: float = 0.05  # SGD, for base_batch videos per step; scaled linearly
    base_batch: int = 64
    min_lr: float = 0.0
    warmup_epochs: int = 5
    epochs: int = 200
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.num_local < 2 and self.order_weight > 0:
            raise ValueError("localglobal.num_local must be >= 2 for the order task (or order_weight 0)")
        if min(self.instance_weight, self.region_weight, self.mi_weight, self.order_weight) < 0:
            raise ValueError("localglobal loss weights must be >= 0")
        if self.tau <= 0 or self.roi_size < 1 or min(self.region_grid) < 1:
            raise ValueError("localglobal.tau must be > 0, roi_size and region_grid entries >= 1")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # noqa: D102
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Identity forward; gradient times ``-lam`` backward."""
    return _GradReverse.apply(x, lam)


def grid_regions(grid: tuple[int, int, int], device: torch.device | str | None = None) -> Tensor:
    """The ``t x h x w`` cells of the unit cube as regions ``[G, 6]`` (t0, t1, x0, y0, x1, y1)."""
    gt, gh, gw = grid
    cells = [(i / gt, (i + 1) / gt, k / gw, j / gh, (k + 1) / gw, (j + 1) / gh)
             for i in range(gt) for j in range(gh) for k in range(gw)]
    return torch.tensor(cells, dtype=torch.float32, device=device)


def st_iou(a: Tensor, b: Tensor) -> Tensor:
    """Spatio-temporal IoU of regions ``a [..., P, 6]`` and ``b [..., Q, 6]`` -> ``[..., P, Q]``."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    inter = torch.ones_like(a[..., 0] * b[..., 0])
    vol_a, vol_b = torch.ones_like(inter), torch.ones_like(inter)
    for lo, hi in ((0, 1), (2, 4), (3, 5)):
        inter = inter * (torch.minimum(a[..., hi], b[..., hi]) - torch.maximum(a[..., lo], b[..., lo])).clamp(min=0)
        vol_a, vol_b = vol_a * (a[..., hi] - a[..., lo]), vol_b * (b[..., hi] - b[..., lo])
    return inter / (vol_a + vol_b - inter).clamp(min=1e-12)


def region_targets(local_regions: Tensor, regions: Tensor, rank: int, world: int) -> Tensor:
    """Soft targets ``[B * M, W * B * R]`` of the local clips over the gathered regions.

    Row (b, m) holds ``st_iou(local m, region r) / sum_r st_iou`` at the columns of this rank's
    video b (``(rank * B + b) * R + r``) and 0 elsewhere.
    """
    b, m = local_regions.shape[:2]
    r = regions.shape[1]
    iou = st_iou(local_regions, regions)  # [B, M, R]
    iou = iou / iou.sum(-1, keepdim=True).clamp(min=1e-12)
    target = iou.new_zeros(b, m, world * b, r)
    videos = torch.arange(b, device=iou.device)
    target[videos, :, rank * b + videos] = iou
    return target.view(b * m, world * b * r)


def roi_pool_3d(fmap: Tensor, regions: Tensor, out: int) -> Tensor:
    """Average of ``fmap [B, C, t, h, w]`` over each region ``[B, R, 6]`` -> ``[B, R, C]``.

    Time: cells weighted by their overlap with [t0, t1]; space: RoIAlign (aligned) of the
    time-weighted map at the box, ``out x out`` samples averaged.
    """
    b, c, t, h, w = fmap.shape
    r = regions.shape[1]
    edges = torch.arange(t + 1, device=fmap.device, dtype=regions.dtype) / t
    t0, t1 = regions[..., 0:1], regions[..., 1:2]  # [B, R, 1]
    wt = (torch.minimum(edges[1:], t1) - torch.maximum(edges[:-1], t0)).clamp(min=0)  # [B, R, t]
    wt = wt / wt.sum(-1, keepdim=True).clamp(min=1e-6)
    maps = torch.einsum("bcthw,brt->brchw", fmap, wt.to(fmap.dtype)).reshape(b * r, c, h, w)
    xyxy = regions[..., 2:].reshape(b * r, 4)
    boxes = torch.stack([xyxy[:, 0] * w, xyxy[:, 1] * h, xyxy[:, 2] * w, xyxy[:, 3] * h], 1)
    idx = torch.arange(b * r, device=fmap.device, dtype=boxes.dtype)[:, None]
    pooled = roi_align(maps, torch.cat([idx, boxes], 1).to(maps.dtype), out, aligned=True)
    return pooled.mean(dim=(2, 3)).view(b, r, c)


def proj_head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, c_out))


class LocalGlobalStudent(nn.Module):
    """Backbone and the heads of the enabled components."""

    def __init__(self, cfg: LocalGlobalConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.arch)
        c = self.backbone.feature_dim
        self.local_proj = proj_head(c, cfg.proj_hidden, cfg.proj_dim)
        if cfg.instance_weight > 0:
            self.global_proj = proj_head(c, cfg.proj_hidden, cfg.proj_dim)
        if cfg.region_weight > 0:
            self.region_proj = proj_head(c, cfg.proj_hidden, cfg.proj_dim)
            self.register_buffer("grid", grid_regions(cfg.region_grid), persistent=False)
        if cfg.mi_weight > 0:
            c1 = self._early_dim()
            self.discriminator = nn.Sequential(nn.Linear(2 * c1, cfg.mi_hidden), nn.ReLU(inplace=True),
                                               nn.Linear(cfg.mi_hidden, 1))
        if cfg.order_weight > 0:
            n_cls = math.factorial(cfg.num_local)
            self.order_head = nn.Sequential(nn.Linear((cfg.num_local + 1) * c, cfg.order_hidden),
                                            nn.ReLU(inplace=True), nn.Linear(cfg.order_hidden, n_cls))

    def _early_dim(self) -> int:
        with torch.device("meta"):
            probe = build_backbone(self.cfg.arch)
            return probe.forward_features(torch.empty(1, 3, 8, 32, 32))["early"].shape[1]

    def instance_loss(self, q: Tensor, g_pooled: Tensor) -> Tensor:
        """Local -> global InfoNCE, the positive being its own video's global clip."""
        b, m = g_pooled.shape[0], self.cfg.num_local
        keys = gather_with_grad(F.normalize(self.global_proj(g_pooled).float(), dim=-1))
        rank, _ = rank_and_world()
        target = rank * b + torch.arange(b, device=q.device).repeat_interleave(m)
        return contrastive_ce(q, keys, target, self.cfg.tau)

    def region_loss(self, q: Tensor, fmap: Tensor, local_regions: Tensor) -> Tensor:
        """Soft region contrast: targets = st-IoU of each local window with its video's regions."""
        b = local_regions.shape[0]
        regions = torch.cat([local_regions, self.grid.expand(b, -1, -1)], 1)  # [B, R, 6]
        r = regions.shape[1]
        pooled = roi_pool_3d(fmap, regions, self.cfg.roi_size).reshape(b * r, -1)
        keys = gather_with_grad(F.normalize(self.region_proj(pooled).float(), dim=-1))
        rank, world = rank_and_world()
        return contrastive_ce(q, keys, region_targets(local_regions, regions, rank, world), self.cfg.tau)

    def mi_loss(self, early_local: Tensor, early_global: Tensor) -> Tensor:
        """Discriminator BCE on (local, global) early-feature pairs: own video = 1, next video = 0."""
        b, m = early_global.shape[0], self.cfg.num_local
        el = grad_reverse(early_local.mean(dim=(2, 3, 4)), self.cfg.grl_lambda)  # [B*M, C1]
        eg = grad_reverse(early_global.mean(dim=(2, 3, 4)), self.cfg.grl_lambda)  # [B, C1]
        own = eg.repeat_interleave(m, 0)
        other = eg.roll(1, 0).repeat_interleave(m, 0)
        logits = self.discriminator(torch.cat([torch.cat([el, own], 1), torch.cat([el, other], 1)])).squeeze(1)
        labels = torch.cat([logits.new_ones(b * m), logits.new_zeros(b * m)])
        with float32_loss(logits):
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def order_loss(self, g_pooled: Tensor, l_pooled: Tensor, order: Tensor) -> Tensor:
        """CE of the local clips' permutation class from ``[global, local_1..local_M]``."""
        logits = self.order_head(torch.cat([g_pooled, l_pooled.reshape(g_pooled.shape[0], -1)], 1))
        with float32_loss(logits):
            return F.cross_entropy(logits.float(), order)

    def forward(self, batch: dict, teacher_out: None = None) -> dict[str, Tensor]:
        """Terms of the enabled components and the weighted ``loss`` (float32 scalars)."""
        cfg = self.cfg
        glob, loc = batch["global"], batch["local"]
        if loc.dim() != 6 or loc.shape[1] != cfg.num_local:
            raise ValueError(f"localglobal: batch['local'] must be [B, {cfg.num_local}, 3, F, H, W], "
                             f"got {tuple(loc.shape)}")
        if glob.shape[0] < 2:
            raise ValueError("localglobal: needs >= 2 videos per rank (BN heads, MI negatives from another video)")
        dev = glob.device
        g = self.backbone.forward_features(glob)
        lf = self.backbone.forward_features(loc.flatten(0, 1))
        q = F.normalize(self.local_proj(lf["pooled"]).float(), dim=-1)  # [B*M, D]
        terms, weights = {}, {}
        if cfg.instance_weight > 0:
            terms["loss_instance"], weights["loss_instance"] = self.instance_loss(q, g["pooled"]), cfg.instance_weight
        if cfg.region_weight > 0:
            times = batch["local_times"].to(dev, non_blocking=True).float()
            boxes = batch["local_boxes"].to(dev, non_blocking=True).float()
            regions = torch.cat([times, boxes], -1)  # [B, M, 6]
            terms["loss_region"], weights["loss_region"] = self.region_loss(q, g["map"], regions), cfg.region_weight
        if cfg.mi_weight > 0:
            terms["loss_mi"], weights["loss_mi"] = self.mi_loss(lf["early"], g["early"]), cfg.mi_weight
        if cfg.order_weight > 0:
            order = batch["order"].to(dev, non_blocking=True).long()
            terms["loss_order"] = self.order_loss(g["pooled"], lf["pooled"], order)
            weights["loss_order"] = cfg.order_weight
        terms["loss"] = sum(weights[k] * terms[k] for k in weights) if weights else q.sum() * 0.0
        return terms


def build(cfg: LocalGlobalConfig, device: torch.device | str) -> MethodParts:
    """Student (SyncBN under DDP when ``sync_bn``), no teacher, one SGD group."""
    student = convert_sync_bn(LocalGlobalStudent(cfg), cfg.sync_bn).to(device)
    return MethodParts(student, None, sgd_groups(student, cfg.weight_decay))


def make_optimizer(cfg: LocalGlobalConfig, parts: MethodParts) -> torch.optim.SGD:
    """SGD with ``momentum``."""
    return build_sgd(parts.param_groups, cfg.momentum)


def lr_at(cfg: LocalGlobalConfig, it: int, iters_per_epoch: int, total_batch: int) -> float:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine to ``min_lr`` (per iteration)."""
    ipe = max(iters_per_epoch, 1)
    peak = cfg.lr * total_batch / cfg.base_batch
    return warmup_cosine(it, cfg.epochs * ipe, cfg.warmup_epochs * ipe, peak, cfg.min_lr)


def export_backbone(student: nn.Module) -> dict:
    """``{"backbone": state_dict, "arch": ..., "method": "localglobal"}``."""
    return export_layout(unwrap(student).backbone, "localglobal")
