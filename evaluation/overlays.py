"""PNG overlays for people to look at: ground truth beside prediction on the frame.

Images are uint8 numpy arrays [H, W, 3]; masks [H, W] label ids; joints [J, 2] (x, y).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from evaluation.datasets import voc_palette
from evaluation.metrics import VOID

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def pick_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over 1 .. T-1 (frame 0 is given, not predicted)."""
    if num_frames < 2 or count <= 0:
        return []
    picks = np.linspace(1, num_frames - 1, num=min(count, num_frames - 1))
    return sorted({int(round(x)) for x in picks})


def blend_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, skip_zero: bool = True) -> np.ndarray:
    """Colour the frame by label (DAVIS colour map) and draw label borders in white."""
    out = image.astype(np.float32).copy()
    colour = _PALETTE[mask].astype(np.float32)
    painted = (mask != 0) if skip_zero else np.ones(mask.shape, dtype=bool)
    painted &= mask != VOID
    out[painted] = (1 - alpha) * out[painted] + alpha * colour[painted]
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    out[edge] = 255
    return out.astype(np.uint8)


def draw_joints(image: np.ndarray, joints: np.ndarray, radius: int = 3) -> np.ndarray:
    """Draw each joint as a dot in its own colour."""
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for j, (x, y) in enumerate(joints):
        c = tuple(int(v) for v in _PALETTE[j + 1])
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=c, outline=(255, 255, 255))
    return np.array(im)


def save_pair(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    """Save two equally sized images side by side (left: ground truth, right: prediction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gap = np.full((left.shape[0], 8, 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)
