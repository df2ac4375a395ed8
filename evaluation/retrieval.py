"""Nearest-neighbour video retrieval, as CoCLR's ``test_retrieval`` and DualVar's 10-clip variant.

Shapes: gallery (train split) features ``[N, D]`` and labels ``[N]``; query (test split) features
``[M, D]`` and labels ``[M]``. Each set is centred on its own mean and L2-normalised; similarity
is the dot product (cosine); a query scores at rank k when any of its k most similar gallery
videos has its class. Recall@k is the fraction of queries that score, in [0, 1].
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.action_config import RetrievalConfig
from evaluation.action_data import Video


def check_features(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                   test_labels: np.ndarray, source: str) -> None:
    """ValueError naming ``source`` and the array when the shapes do not fit together."""
    checks = [
        (train_feats.ndim == 2 and len(train_feats) > 0, f"train_feats must be [N, D] with N > 0, got {train_feats.shape}"),
        (test_feats.ndim == 2 and len(test_feats) > 0, f"test_feats must be [M, D] with M > 0, got {test_feats.shape}"),
        (train_feats.shape[1:] == test_feats.shape[1:], f"train_feats D {train_feats.shape[1:]} != test_feats D {test_feats.shape[1:]}"),
        (train_labels.shape == (len(train_feats),), f"train_labels must be [{len(train_feats)}], got {train_labels.shape}"),
        (test_labels.shape == (len(test_feats),), f"test_labels must be [{len(test_feats)}], got {test_labels.shape}"),
        (np.isfinite(train_feats).all() and np.isfinite(test_feats).all(), "features contain NaN or inf"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{source}: {message}")


def centre_normalise(x: torch.Tensor) -> torch.Tensor:
    """Subtract the set's mean feature, then L2-normalise each row."""
    return F.normalize(x - x.mean(dim=0, keepdim=True), p=2, dim=1)


def nearest(test_feats: np.ndarray, train_feats: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery items of every query: cosines ``[M, k]`` and indices ``[M, k]``."""
    q = centre_normalise(torch.from_numpy(np.asarray(test_feats, np.float64)))
    g = centre_normalise(torch.from_numpy(np.asarray(train_feats, np.float64)))
    k = min(k, len(g))
    sims, idx = [], []
    for start in range(0, len(q), chunk):
        s, i = (q[start:start + chunk] @ g.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def recall_at_k(idx: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray,
                ks: Sequence[int]) -> dict[str, float]:
    """``R@k``: fraction of queries with a same-class gallery item among their top k."""
    hits = np.asarray(train_labels)[idx] == np.asarray(test_labels)[:, None]  # [M, K]
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def score(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
          cfg: RetrievalConfig) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Recall at ``cfg.ks`` and the top neighbours (cosines, indices) of every query."""
    sims, idx = nearest(test_feats, train_feats, max(max(cfg.ks), cfg.neighbours, cfg.png_neighbours))
    return recall_at_k(idx, train_labels, test_labels, cfg.ks), sims, idx


def neighbour_rows(sims: np.ndarray, idx: np.ndarray, test_keys: Sequence[str], test_labels: np.ndarray,
                   train_keys: Sequence[str], train_labels: np.ndarray, classes: Sequence[str],
                   n: int) -> tuple[list[str], list[list]]:
    """neighbours.csv: one row per (query, rank <= n)."""
    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else str(label)

    header = ["query", "query_class", "rank", "neighbour", "neighbour_class", "cosine", "same_class"]
    rows = []
    for q in range(len(idx)):
        for r in range(min(n, idx.shape[1])):
            j = int(idx[q, r])
            rows.append([test_keys[q], name(int(test_labels[q])), r + 1, train_keys[j], name(int(train_labels[j])),
                         float(sims[q, r]), int(train_labels[j] == test_labels[q])])
    return header, rows


def middle_frame(video: Video) -> np.ndarray:
    """The video's middle stored frame as RGB uint8."""
    from PIL import Image

    jpeg = video.ref.frame_jpegs()[video.num_frames // 2]
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def draw_neighbours(path: Path, queries: Sequence[Video], gallery: Sequence[Video], sims: np.ndarray,
                    idx: np.ndarray, classes: Sequence[str], cfg: RetrievalConfig) -> None:
    """A PNG: a few queries (evenly spread over the test split), each beside its top neighbours;
    green titles share the query's class, red ones do not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, len(queries) - 1, min(cfg.png_queries, len(queries))).astype(int))
    cols = 1 + min(cfg.png_neighbours, idx.shape[1])
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.2 * cols, 2.0 * len(picks)), squeeze=False)
    for row, q in zip(axes, picks):
        query = queries[q]
        row[0].imshow(middle_frame(query))
        row[0].set_title(f"query\n{classes[query.label]}", fontsize=8)
        for r, ax in enumerate(row[1:]):
            g = gallery[int(idx[q, r])]
            ax.imshow(middle_frame(g))
            colour = "green" if g.label == query.label else "red"
            ax.set_title(f"#{r + 1} {classes[g.label]}\ncos {sims[q, r]:.2f}", fontsize=8, color=colour)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
