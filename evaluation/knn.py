"""k-NN classification on frozen class-token features (the DINO protocol).

Shapes: frames ``[N, F, 3, H, W]`` uint8 (F frames per clip), features ``[N, D]`` float,
labels ``[N]`` int64. A clip's feature is the mean over its frames of the backbone's final-norm
class token, L2-normalised. A query votes with its ``k`` most cosine-similar gallery clips,
each weighted by ``exp(similarity / temperature)``; the class with the largest vote wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalise(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 ``[M, 3, H, W]`` -> float ImageNet-normalised ``[M, 3, *size]`` (bicubic, antialiased)."""
    x = frames.float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_features(backbone: nn.Module, frames: Tensor, size: tuple[int, int], batch: int = 64) -> Tensor:
    """Mean class token over each clip's frames, L2-normalised: ``[N, F, 3, H, W]`` -> ``[N, D]``."""
    n, f = frames.shape[:2]
    flat = frames.reshape(n * f, *frames.shape[2:])
    dev = next(backbone.parameters()).device
    out = [backbone(normalise(flat[i:i + batch].to(dev), size)).float() for i in range(0, n * f, batch)]
    feats = torch.cat(out).view(n, f, -1).mean(1)
    return F.normalize(feats, dim=-1)


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, k: int = 20,
                temperature: float = 0.07) -> Tensor:
    """Predicted class of each test row ``[M]`` by similarity-weighted voting of its ``k`` nearest rows."""
    if train_feats.shape[0] == 0:
        raise ValueError("k-NN: the gallery is empty")
    k = min(k, train_feats.shape[0])
    sim = F.normalize(test_feats.float(), dim=-1) @ F.normalize(train_feats.float(), dim=-1).t()
    top, idx = sim.topk(k, dim=1)
    n_cls = int(train_labels.max()) + 1
    votes = torch.zeros(test_feats.shape[0], n_cls, device=sim.device)
    votes.scatter_add_(1, train_labels[idx], (top / temperature).exp())
    return votes.argmax(1)


def knn_top1(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
             k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict`` on the test rows."""
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature)
    return float((pred == test_labels).float().mean())
