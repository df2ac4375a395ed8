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
    a, boxes = digits.clip(np.random.default_rng(3), scans, labels, 3, label=4)
    b, _ = digits.clip(np.random.default_rng(3), scans, labels, 3, label=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (*digits.HW, 3)
    assert len(boxes) == 3 and all(0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 128 for x0, y0, x1, y1 in boxes)

    def features(held: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, lab = digits.scan_split(held)
        feats = [_colour_histogram(digits.clip(np.random.default_rng([int(held), i]), s, lab, 2, i % 10)[0])
                 for i in range(n)]
        return torch.stack(feats), torch.arange(n) % 10

    train, train_y = features(False, 100)
    val, val_y = features(True, 100)
    # colour statistics carry no class: k-NN on colour histograms stays near chance (0.1; 0.12 here,
    # one binomial sigma on 100 clips is 0.03)
    assert knn_top1(train, train_y, val, val_y, k=10) <= 0.22


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


def test_clean_crops_draw_the_world_clips_own_scans():
    crops, labels = digits.clean_crops(12, held_out=True, size=32)
    assert crops.shape == (12, 1, 3, 32, 32) and crops.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(12)]
    scans, scan_labels = digits.scan_split(held_out=True)
    for i in (0, 7):
        # the scan write_kinetics gives held-out clip i is the first draw of that clip's generator
        mover = digits.make_mover(np.random.default_rng([0, 1, i]), scans, scan_labels, 4, (48, 80), i % 10)
        glyph = digits.glyph_alpha(mover.scan, 24, 0.0) > 0.5
        assert mover.label == labels[i]
        assert np.array_equal(crops[i, 0, 0, 4:28, 4:28] > 127, glyph)
    # white strokes on black, no colour: all three channels equal, both levels present
    assert (crops[:, :, 0] == crops[:, :, 2]).all() and crops.max() == 255 and crops.min() == 0
    assert not np.array_equal(crops, digits.clean_crops(12, held_out=False, size=32)[0])


def test_square_box_stays_inside_the_frame():
    from tools.learn_check import square_box

    assert square_box([40, 30, 80, 90], 128, 160) == (21, 21, 99, 99)  # 60 px + 15 % a side = 78, centred
    left, top, right, bottom = square_box([0, 0, 20, 10], 128, 160)
    assert (left, top) == (0, 0) and right - left == bottom - top == 26
    assert square_box([100, 0, 160, 128], 128, 160) == (32, 0, 160, 128)  # wider than the frame is tall


def test_collapse_verdicts():
    import math

    from tools.learn_check import collapse_verdict

    ln_k, dim = math.log(256), 64
    healthy = {"stat_cls_std": 0.1, "stat_teacher_entropy": 1.0, "stat_teacher_usage": 4.0}
    assert all(collapse_verdict(healthy, ln_k, dim).values())
    uniform = healthy | {"stat_teacher_entropy": 0.95 * ln_k}
    one_prototype = healthy | {"stat_teacher_usage": 0.5}
    still = healthy | {"stat_cls_std": 0.01}
    assert not collapse_verdict(uniform, ln_k, dim)["targets_not_uniform"]
    assert not collapse_verdict(one_prototype, ln_k, dim)["prototypes_used"]
    assert not collapse_verdict(still, ln_k, dim)["tokens_spread"]
