"""iBOT-style block masks for the student's current-frame global crops, made on the host.

Shapes: ``C`` crops (all global crops of the batch, crop-major: index = crop * B + image),
``N = H * W`` patches. ``masks [C, N]`` bool. The masked positions are also returned as a
fixed-size list of ``M`` slots (``slot_crop [M]``, ``slot_pos [M]``), so that gathering the
masked tokens has a shape known on the host: no ``nonzero`` and no host synchronisation.

Rule (T-CoRe's collate function and masking generator, which are DINOv2's): ``int(C * p)`` crops
are masked, the others not; the i-th masked crop gets ``int(N * u)`` patches with ``u`` drawn
uniformly from the i-th of ``int(C * p)`` equal sub-intervals of ``[r_min, r_max]``; which crop
gets which count is a random shuffle. A crop is filled with rectangular blocks until *exactly*
that many patches are masked: each block has an area drawn from ``[min_block, min(remaining,
max_block)]`` and a log-uniform aspect ratio, must be strictly smaller than the grid on both
sides, and is kept when it adds between 1 and ``remaining`` new patches (up to 10 proposals per
block). ``M`` is the sum of ``int(N * r_i_max)`` over the masked crops (the reference's
"upper bound"), fixed for a given ``C`` and grid.

The masks are drawn with Python's ``random`` from a per-step seed (pure, so a resumed run draws
the same masks), packed into one byte buffer and moved to the device in one copy
(``MaskMaker`` builds step s + 1's buffer in a background thread while step s runs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

PROPOSALS_PER_BLOCK = 10  # the reference's tries before it starts a new block
MAX_PROPOSALS = 10_000  # per crop; ~10 on average and ~120 at most on a 14x14 grid at ratios up to 0.9


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


def block_mask(h: int, w: int, count: int, rng: random.Random, min_block: int, max_block: int,
               aspect: tuple[float, float]) -> np.ndarray:
    """An ``[h, w]`` bool mask of blocks covering exactly ``count`` patches (``count < h * w``)."""
    mask = np.zeros((h, w), dtype=bool)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    done = proposals = 0
    while done < count:
        room = min(count - done, max_block)
        proposals += PROPOSALS_PER_BLOCK
        if proposals > MAX_PROPOSALS:
            raise ValueError(f"masks: {count} of {h}x{w} patches not reached after {MAX_PROPOSALS} block "
                             f"proposals (blocks must be smaller than the grid; a larger grid or ratio fits)")
        for _ in range(PROPOSALS_PER_BLOCK):
            area = rng.uniform(min_block, room)
            ar = math.exp(rng.uniform(log_lo, log_hi))
            bh, bw = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if bh >= h or bw >= w:
                continue
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            block = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(block.sum())
            if 0 < new <= room:
                block[...] = True
                done += new
                break
    return mask


def host_masks(n_crops: int, grid: tuple[int, int], seed: int, *, prob: float,
               ratio_min_max: tuple[float, float], min_block: int, max_block_ratio: float,
               aspect: tuple[float, float]) -> np.ndarray:
    """The packed masks of one step (see ``pack``), drawn from ``seed``."""
    h, w = grid
    n = h * w
    if prob > 0 and min(h, w) < 2:
        raise ValueError(f"masks: a {h}x{w} patch grid has no block smaller than the grid (need 2x2 or more)")
    rng = random.Random(seed)
    max_block = max(min_block, int(max_block_ratio * n))
    bounds = ratio_bounds(n_crops, prob, *ratio_min_max)
    counts = [int(n * rng.uniform(lo, hi)) for lo, hi in bounds]
    masks = np.zeros((n_crops, n), dtype=bool)
    crops = list(range(n_crops))
    rng.shuffle(crops)  # the i-th ratio interval goes to crop crops[i]
    for crop, count in zip(crops, counts):
        masks[crop] = block_mask(h, w, min(count, n - 1), rng, min_block, max_block, aspect).ravel()
    caps = [int(n * hi) for _, hi in bounds]
    return pack(masks, crops[:len(caps)], caps)


def make_masks(n_crops: int, grid: tuple[int, int], seed: int, *, device: torch.device | str = "cpu",
               **rule) -> MaskBatch:
    """``host_masks`` (``rule``: its keyword arguments) as a ``MaskBatch`` on ``device``."""
    buf = torch.from_numpy(host_masks(n_crops, grid, seed, **rule)).to(device)
    return unpack(buf, n_crops, grid[0] * grid[1])


def _pad8(x: int) -> int:
    return (x + 7) // 8 * 8


def pack(masks: np.ndarray, crops: list[int], caps: list[int]) -> np.ndarray:
    """One uint8 buffer: masks ``[C*N]`` bool (padded to 8 bytes), then ``slot_crop``, ``slot_pos``
    (int64, ``M`` each), then ``slot_valid``, ``slot_weight`` (float32, ``M`` each).

    Crop ``crops[i]`` owns ``caps[i]`` consecutive slots: its masked positions, then padding
    (position 0, valid 0, weight 0).
    """
    c, n = masks.shape
    m = sum(caps)
    idx = np.zeros((2, m), dtype=np.int64)
    flt = np.zeros((2, m), dtype=np.float32)
    start = 0
    for crop, cap in zip(crops, caps):
        pos = np.flatnonzero(masks[crop])
        if len(pos) > cap:
            raise ValueError(f"masks: crop {crop} has {len(pos)} masked patches, more than its {cap} slots")
        idx[0, start:start + cap] = crop
        idx[1, start:start + len(pos)] = pos
        flt[0, start:start + len(pos)] = 1.0
        flt[1, start:start + len(pos)] = 1.0 / max(len(pos), 1)
        start += cap
    buf = np.zeros(_pad8(c * n) + 24 * m, dtype=np.uint8)
    buf[:c * n] = masks.ravel().view(np.uint8)
    a = _pad8(c * n)
    buf[a:a + 16 * m] = idx.ravel().view(np.uint8)
    buf[a + 16 * m:] = flt.ravel().view(np.uint8)
    return buf


def unpack(buf: Tensor, n_crops: int, n: int) -> MaskBatch:
    """Views of a packed buffer (on any device) as a ``MaskBatch``: no copy, no kernel."""
    a = _pad8(n_crops * n)
    m = (buf.shape[0] - a) // 24
    idx = buf[a:a + 16 * m].view(torch.int64)
    flt = buf[a + 16 * m:a + 24 * m].view(torch.float32)
    return MaskBatch(buf[:n_crops * n].view(torch.bool).view(n_crops, n), idx[:m], idx[m:], flt[:m], flt[m:])


class MaskMaker:
    """Masks for training steps: built on the host one step ahead in a background thread, then
    handed to the device as one pinned buffer copied without blocking.

    ``make(n_crops, grid, seed)`` returns a packed buffer (``host_masks`` with the model's mask
    settings bound); ``seed_of(step)`` is the step's seed, so the masks of a step do not depend
    on what ran before it.
    """

    def __init__(self, make: Callable[[int, tuple[int, int], int], np.ndarray], seed_of: Callable[[int], int],
                 device: torch.device) -> None:
        self.make, self.seed_of, self.device = make, seed_of, device
        init = (lambda: torch.cuda.set_device(device)) if device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="masks", initializer=init)
        self._ahead: tuple[tuple, Future] | None = None

    def _build(self, key: tuple[int, int, tuple[int, int]]) -> Tensor:
        step, n_crops, grid = key
        buf = torch.from_numpy(self.make(n_crops, grid, self.seed_of(step)))
        return buf.pin_memory() if self.device.type == "cuda" else buf

    def get(self, step: int, n_crops: int, grid: tuple[int, int]) -> MaskBatch:
        """The masks of ``step`` on the device; starts building those of ``step + 1``."""
        key = (step, n_crops, tuple(grid))
        if self._ahead is not None and self._ahead[0] == key:
            buf = self._ahead[1].result()
        else:
            buf = self._build(key)
        nxt = (step + 1, n_crops, tuple(grid))
        self._ahead = (nxt, self._pool.submit(self._build, nxt))
        return unpack(buf.to(self.device, non_blocking=True), n_crops, grid[0] * grid[1])

    def close(self) -> None:
        """Stop the background thread (the step being built ahead is finished and dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead = None
