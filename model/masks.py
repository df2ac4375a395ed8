"""iBOT-style block masks for the student's current-frame global crops, made on the device.

Shapes: ``C`` crops (all global crops of the batch, crop-major: index = crop * B + image),
``N = H * W`` patches. ``masks [C, N]`` bool. The masked positions are also returned as a
fixed-size list of ``M`` slots (``slot_crop [M]``, ``slot_pos [M]``), so that gathering the
masked tokens has a shape known on the host: no ``nonzero`` and no host synchronisation.

Rule (as in iBOT/DINOv2): ``int(C * p)`` crops are masked, the others not; the i-th masked
crop gets a target ratio drawn uniformly from the i-th of ``int(C * p)`` equal sub-intervals of
``[r_min, r_max]``; which crops get which ratio is a random permutation. Each crop is filled
with rectangular blocks (area >= ``min_block`` patches, at most ``max_block_ratio`` of the grid,
log-uniform aspect ratio) without exceeding its target. Blocks are proposed for all crops at
once, ``rounds`` times.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor


class MaskBatch(NamedTuple):
    """Masks and the fixed-size slot list covering every masked patch."""

    masks: Tensor  # [C, N] bool
    slot_crop: Tensor  # [M] long, crop of each slot
    slot_pos: Tensor  # [M] long, patch index of each slot
    slot_valid: Tensor  # [M] float, 1 where the slot is a masked patch, else 0 (padding)
    slot_weight: Tensor  # [M] float, 1 / (masked patches in its crop) for valid slots, else 0


def ratio_bounds(n_crops: int, prob: float, ratio_min: float, ratio_max: float) -> list[tuple[float, float]]:
    """The ``int(n_crops * prob)`` ratio intervals, evenly spread over ``[ratio_min, ratio_max]``."""
    n = int(n_crops * prob)
    edges = [ratio_min + (ratio_max - ratio_min) * i / n for i in range(n + 1)] if n else []
    return [(edges[i], edges[i + 1]) for i in range(n)]


@functools.lru_cache(maxsize=16)
def _layout(n_crops: int, n: int, prob: float, ratio_min_max: tuple[float, float], device: str):
    """Per-run constants on the device (built once, so steps do no host-to-device copies)."""
    bounds = ratio_bounds(n_crops, prob, *ratio_min_max)
    caps = [int(n * hi) for _, hi in bounds]  # host-known upper bound of each masked crop's count
    lo = torch.tensor([n * b[0] for b in bounds], dtype=torch.float32)
    hi = torch.tensor([n * b[1] for b in bounds], dtype=torch.float32)
    group = torch.repeat_interleave(torch.arange(len(caps)), torch.tensor(caps, dtype=torch.long))
    rank = torch.cat([torch.arange(cap) for cap in caps]) if caps else torch.zeros(0, dtype=torch.long)
    caps_t = torch.tensor(caps, dtype=torch.long)
    return tuple(t.to(device) for t in (lo, hi, caps_t, group, rank))


def _place_blocks(target: Tensor, h: int, w: int, min_block: int, max_block: int, aspect: tuple[float, float],
                  rounds: int, gen: torch.Generator) -> Tensor:
    """Fill each crop with blocks up to ``target[c]`` patches. Returns ``[C, h, w]`` bool."""
    c, dev = target.shape[0], target.device
    mask = torch.zeros(c, h, w, dtype=torch.bool, device=dev)
    count = torch.zeros(c, dtype=torch.long, device=dev)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(rounds):
        u = torch.rand(c, 5, device=dev, generator=gen)
        room = (target - count).clamp(max=max_block).float()
        area = min_block + u[:, 0] * (room - min_block).clamp(min=0)
        ar = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
        bh = torch.round(torch.sqrt(area * ar)).long().clamp(min=1)
        bw = torch.round(torch.sqrt(area / ar)).long().clamp(min=1)
        top = torch.floor(u[:, 2] * (h - bh + 1).clamp(min=1)).long()
        left = torch.floor(u[:, 3] * (w - bw + 1).clamp(min=1)).long()
        block = ((rows >= top.view(c, 1, 1)) & (rows < (top + bh).view(c, 1, 1))
                 & (cols >= left.view(c, 1, 1)) & (cols < (left + bw).view(c, 1, 1)))
        new = (block & ~mask).flatten(1).sum(1)
        ok = (bh <= h) & (bw <= w) & (bh * bw >= min_block) & (new > 0) & (count + new <= target)
        mask |= block & ok.view(c, 1, 1)
        count += new * ok
    return mask


def make_masks(n_crops: int, grid: tuple[int, int], *, prob: float, ratio_min_max: tuple[float, float],
               min_block: int, max_block_ratio: float, aspect: tuple[float, float], rounds: int,
               generator: torch.Generator, device: torch.device | str) -> MaskBatch:
    """Masks for ``n_crops`` crops of an ``grid = (h, w)`` patch grid, all on ``device``."""
    h, w = grid
    n = h * w
    lo, hi, caps, group, rank = _layout(n_crops, n, prob, tuple(ratio_min_max), str(device))
    k = len(caps)
    goal = torch.floor(lo + torch.rand(k, device=device, generator=generator) * (hi - lo)).long()
    goal = torch.minimum(goal, caps)
    perm = torch.randperm(n_crops, device=device, generator=generator)
    target = torch.zeros(n_crops, dtype=torch.long, device=device).index_put_((perm[:k],), goal)
    max_block = max(min_block, int(max_block_ratio * n))
    masks = _place_blocks(target, h, w, min_block, max_block, aspect, rounds, generator).flatten(1)
    # slots: crop perm[i] owns caps[i] slots, filled with its masked positions first
    slot_crop = perm[group]
    order = torch.argsort((~masks).to(torch.int8), dim=1, stable=True)  # masked positions first
    slot_pos = order[slot_crop, rank]
    slot_valid = masks[slot_crop, slot_pos].float()
    n_masked = masks.sum(1).clamp(min=1).float()
    return MaskBatch(masks, slot_crop, slot_pos, slot_valid, slot_valid / n_masked[slot_crop])
