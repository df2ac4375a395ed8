"""The digit world (colour and position carry no label) and the k-NN protocol of the learning check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation import digits
from evaluation.datasets import read_davis, read_index_png
from evaluation.knn import knn_predict, knn_top1


def test_knn_votes_by_hand():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.4]])
    assert knn_predict(gallery, labels, queries, k=1).tolist() == [0, 1, 0]
    assert knn_top1(gallery, labels, queries, torch.tensor([0, 1, 1]), k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        knn_predict(gallery[:0], labels[:0], queries)


def _colour_histogram(clip: list[np.ndarray]) -> torch.Tensor:
    """Joint RGB histogram (4 bins per channel) over a clip's frames: a pure colour feature."""
    px = np.concatenate([f.reshape(-1, 3) for f in clip]) // 64
    hist = np.bincount(px[:, 0] * 16 + px[:, 1] * 4 + px[:, 2], minlength=64).astype(np.float32)
    return torch.from_numpy(hist / hist.sum())


def test_digit_clips_are_deterministic_and_colour_does_not_give_the_class():
    scans, labels = digits.scan_split(held_out=False)
    a = digits.clip(np.random.default_rng(3), scans, labels, 3, label=4)
    b = digits.clip(np.random.default_rng(3), scans, labels, 3, label=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (*digits.HW, 3)

    def features(held: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, lab = digits.scan_split(held)
        feats = [_colour_histogram(digits.clip(np.random.default_rng([int(held), i]), s, lab, 2, i % 10))
                 for i in range(n)]
        return torch.stack(feats), torch.arange(n) % 10

    train, train_y = features(False, 60)
    val, val_y = features(True, 40)
    # colour statistics carry no class: k-NN on colour histograms stays near chance (0.1)
    assert knn_top1(train, train_y, val, val_y, k=10) <= 0.3


def test_davis_layout_masks_follow_occluding_digits(tmp_path):
    root = digits.write_davis(tmp_path / "davis", n_videos=2, frames=6)
    videos = read_davis(root)
    assert [v.name for v in videos] == ["digits00", "digits01"]
    for v in videos:
        ids = [read_index_png(m) for m in v.masks]
        present = set(np.unique(np.concatenate([m.ravel() for m in ids]))) - {0}
        assert present == set(range(1, 3 + int(v.name.endswith("1"))))  # 2 then 3 objects
        # the objects move: masks of the first and last frame differ
        assert (ids[0] != ids[-1]).mean() > 0.01
