"""Benchmark metrics, written from their published definitions.

DAVIS (Pont-Tuset et al. 2017, as scored by the official davis2017 toolkit):
- J: region similarity, intersection over union of the object's masks; void pixels (255 in the
  ground truth) are excluded; a frame where both masks are empty scores 1.
- F: boundary F-measure. Boundaries are one-pixel maps where a pixel differs from its right,
  lower or lower-right neighbour (pixels outside the image count as equal: seg2bmap). A
  boundary pixel matches if the other boundary lies within a disk of radius
  ceil(0.008 x image diagonal). F = 2PR / (P + R); empty-vs-empty is 1, empty-vs-nonempty 0.
- per object: mean, recall (fraction of frames > 0.5) and decay (mean of the first quarter of
  frames minus mean of the last quarter, quarters cut at round(linspace(1, n, 5)) - 1, bins
  sharing their edge frames); J&F-Mean = (J-Mean + F-Mean) / 2. The first and last frame of
  each sequence are not scored.
JHMDB: PCK@a, a joint is correct when within a x 0.6 x the diagonal of the ground-truth joints'
bounding box of that frame. VIP: mean IoU over classes, from a confusion matrix summed over all
scored frames; classes absent from both prediction and ground truth are left out.

Masks are numpy arrays [H, W] (or [N, H, W]) of bools or label ids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BOUND_TH = 0.008
VOID = 255


def region_j(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """IoU over the last two axes; 1 where both masks are empty (outside void)."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map [H, W]: pixels differing from the right, lower or lower-right
    neighbour, with neighbours outside the image equal to the pixel's edge neighbour."""
    s = np.pad(seg.astype(bool), ((0, 1), (0, 1)), mode="edge")
    here = s[:-1, :-1]
    return (here ^ s[:-1, 1:]) | (here ^ s[1:, :-1]) | (here ^ s[1:, 1:])


def disk(radius: int) -> np.ndarray:
    """Boolean disk of the given radius: x^2 + y^2 <= r^2, size (2r+1)^2."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx**2 + yy**2) <= radius**2


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of [H, W] by a disk (a convolution with the disk, thresholded)."""
    if radius <= 0:
        return mask.astype(bool)
    kernel = torch.from_numpy(disk(radius).astype(np.float32))[None, None]
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.conv2d(x, kernel, padding=radius)[0, 0] > 0.5).numpy()


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: bound_th itself when >= 1, else ceil(bound_th x diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = BOUND_TH) -> float:
    """DAVIS boundary F-measure of one frame [H, W]."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        gt, pred = gt & keep, pred & keep
    radius = boundary_tolerance(gt.shape, bound_th)
    gt_b, pred_b = seg2bmap(gt), seg2bmap(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0  # P or R is 0 and the other 1
    precision = float((pred_b & dilate(gt_b, radius)).sum()) / n_pred
    recall = float((gt_b & dilate(pred_b, radius)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mean_recall_decay(values: np.ndarray) -> tuple[float, float, float]:
    """Per-object statistics over its scored frames: mean, recall (> 0.5), decay."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("mean_recall_decay: no scored frames")
    edges = np.floor(np.linspace(1, n, 5) + 0.5).astype(int) - 1
    bins = [v[edges[i] : edges[i + 1] + 1] for i in range(4)]
    return float(v.mean()), float((v > 0.5).mean()), float(bins[0].mean() - bins[3].mean())


def davis_sequence(gt: list[np.ndarray], pred: list[np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-object J and F over frames 1 .. T-2 of one sequence.

    ``gt`` and ``pred`` are label-id masks per frame; objects are 1 .. max id of the first
    ground-truth frame; 255 in the ground truth is void. Returns {object id: (J[T-2], F[T-2])}.
    """
    if len(gt) != len(pred):
        raise ValueError(f"davis_sequence: {len(gt)} ground-truth frames but {len(pred)} predictions")
    if len(gt) < 3:
        raise ValueError(f"davis_sequence: needs at least 3 frames, got {len(gt)}")
    first = gt[0][gt[0] != VOID]
    n_obj = int(first.max()) if first.size else 0
    out = {}
    for obj in range(1, n_obj + 1):
        js, fs = [], []
        for g, p in zip(gt[1:-1], pred[1:-1]):
            if g.shape != p.shape:
                raise ValueError(f"davis_sequence: prediction size {p.shape} != annotation size {g.shape}")
            void = g == VOID
            js.append(float(region_j(g == obj, p == obj, void)))
            fs.append(boundary_f(g == obj, p == obj, void))
        out[obj] = (np.array(js), np.array(fs))
    return out


def davis_summary(per_object: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The official summary: J/F mean, recall, decay averaged over objects, and J&F-Mean."""
    if not per_object:
        raise ValueError("davis_summary: no objects were scored")
    stats = {k: [mean_recall_decay(j), mean_recall_decay(f)] for k, (j, f) in per_object.items()}
    res = {}
    for m, name in enumerate(("J", "F")):
        for s, stat in enumerate(("Mean", "Recall", "Decay")):
            res[f"{name}-{stat}"] = float(np.mean([v[m][s] for v in stats.values()]))
    res["J&F-Mean"] = (res["J-Mean"] + res["F-Mean"]) / 2
    return {k: res[k] for k in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")}


PCK_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)


def pck_hits(pred: np.ndarray, gt: np.ndarray, alphas: tuple[float, ...] = PCK_ALPHAS) -> np.ndarray:
    """Correct-joint indicators [len(alphas), N, J] for predictions/ground truth [N, J, 2].

    Reference length per frame: 0.6 x diagonal of the box spanned by that frame's joints.
    """
    span = gt.max(axis=1) - gt.min(axis=1)  # [N, 2]
    ref = 0.6 * np.hypot(span[:, 0], span[:, 1])  # [N]
    dist = np.linalg.norm(pred - gt, axis=-1)  # [N, J]
    return np.stack([dist <= a * ref[:, None] for a in alphas])


def confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix [gt class, predicted class]; gt pixels outside [0, n) are ignored."""
    g, p = gt.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    keep = (g >= 0) & (g < n_classes)
    p = np.clip(p[keep], 0, n_classes - 1)
    return np.bincount(g[keep] * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over classes present in the ground truth or the prediction."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    if not present.any():
        raise ValueError("mean_iou: empty confusion matrix")
    return float((inter[present] / union[present]).mean())
