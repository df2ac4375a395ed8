"""Label propagation by feature affinity (the CropMAE / videowalk protocol), as matrix work on
one device.

Shapes: frames are uint8 [3, H, W]; features [T, h, w, D] (L2-normalised along D); labels
[C, h, w] soft maps at the feature grid; flattened grids use n = h * w.

For frame t the keys are the first frame (long-term memory, no radius limit) and the
``context`` previous frames (indices clamped at 0, so the first frame repeats to fill), limited
to keys within ``radius`` patches of the query. Affinities (cosine) / ``temperature`` are
kept for the ``topk`` best keys per query patch, softmax-ed, and the keys' labels averaged with
those weights. Predictions (soft) become the labels of later context frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from evaluation.config import PropagationConfig

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, H, W] float -> [B, h, w, D]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASKED = -1e10  # affinity of keys outside the radius (finite: softmax stays defined)


def preprocess(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, *size], resized (bilinear, antialiased), ImageNet-normalised."""
    x = frames.float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def extract_features(feature_fn: FeatureFn, frames: list[torch.Tensor], size: tuple[int, int],
                     batch_size: int, bf16: bool = False) -> torch.Tensor:
    """Features of every frame in batches: [T, h, w, D], float32, L2-normalised along D."""
    out = []
    for i in range(0, len(frames), batch_size):
        batch = preprocess(torch.stack(frames[i : i + batch_size]), size)
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = feature_fn(batch)
        if feats.ndim != 4 or feats.shape[0] != batch.shape[0]:
            raise ValueError(f"feature function returned shape {tuple(feats.shape)}, expected [B, h, w, D]")
        out.append(F.normalize(feats.float(), dim=-1))
    return torch.cat(out)


def downsample_labels(onehot: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One-hot maps [C, H, W] -> their area averages on the feature grid [C, h, w]."""
    return F.adaptive_avg_pool2d(onehot.float()[None], grid)[0]


def upsample_labels(soft: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Soft maps [C, h, w] -> bilinear [C, H, W] at the original resolution."""
    return F.interpolate(soft[None], size=size, mode="bilinear", align_corners=False)[0]


def radius_bias(h: int, w: int, radius: float, device: torch.device) -> torch.Tensor:
    """[n, n] additive mask: 0 where the key is within ``radius`` patches of the query, else MASKED."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1).float()
    dist = torch.cdist(pos, pos)
    return torch.where(dist < radius, 0.0, MASKED)


def context_indices(t: int, context: int) -> list[int]:
    """The ``context`` frames before t, oldest first, clamped at frame 0."""
    return [max(t - context + i, 0) for i in range(context)]


@torch.inference_mode()
def propagate(feats: torch.Tensor, first: torch.Tensor, cfg: PropagationConfig) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (t, soft labels [C, h, w]) for t = 1 .. T-1, propagated from ``first`` [C, h, w]."""
    if cfg.topk is None:
        raise ValueError("propagation.topk: must be set (the task's protocol value) before propagating")
    T, h, w, D = feats.shape
    C = first.shape[0]
    if tuple(first.shape[1:]) != (h, w):
        raise ValueError(f"first-frame labels {tuple(first.shape)} do not match the feature grid {(h, w)}")
    n = h * w
    f = feats.reshape(T, n, D)
    labels = torch.zeros(T, n, C, device=feats.device, dtype=torch.float32)
    labels[0] = first.reshape(C, n).T
    bias = radius_bias(h, w, cfg.radius, feats.device)
    for t in range(1, T):
        ctx = context_indices(t, cfg.context)
        if cfg.long_memory:
            ctx = [0, *ctx]
        uniq = sorted(set(ctx))  # repeated first frames: one matmul, then expanded
        expand = torch.tensor([uniq.index(i) for i in ctx], device=feats.device)
        keys = f[uniq].reshape(-1, D)  # [U*n, D]
        key_labels = labels[ctx].reshape(-1, C)  # [L(+1)*n, C]
        k = min(cfg.topk, key_labels.shape[0])
        start = 1 if cfg.long_memory else 0
        for r0 in range(0, n, cfg.query_chunk):
            q = f[t, r0 : r0 + cfg.query_chunk]  # [q, D]
            aff = (q @ keys.T).view(q.shape[0], len(uniq), n)[:, expand]  # [q, L(+1), n]
            aff[:, start:] += bias[r0 : r0 + q.shape[0], None, :]
            weights, idx = torch.topk(aff.view(q.shape[0], -1) / cfg.temperature, k, dim=1)
            weights = torch.softmax(weights, dim=1)
            labels[t, r0 : r0 + q.shape[0]] = torch.einsum("qk,qkc->qc", weights, key_labels[idx])
        yield t, labels[t].T.reshape(C, h, w)


def sync(device: torch.device) -> None:
    """Wait for queued device work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
