"""Benchmark metrics on hand-made masks and joints with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import (
    boundary_f,
    boundary_tolerance,
    confusion,
    davis_sequence,
    davis_summary,
    dilate,
    mean_iou,
    mean_recall_decay,
    pck_hits,
    region_j,
    seg2bmap,
)


def box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_region_j_overlap_empty_and_void():
    gt = box((10, 10), 2, 6, 2, 6)  # 16 px
    pred = box((10, 10), 2, 6, 4, 8)  # 16 px, 8 shared
    assert region_j(gt, pred) == pytest.approx(8 / 24)
    void = box((10, 10), 2, 6, 6, 8)  # the 8 prediction-only pixels
    assert region_j(gt, pred, void) == pytest.approx(8 / 16)
    empty = np.zeros((10, 10), dtype=bool)
    assert region_j(empty, empty) == 1.0
    assert region_j(gt, empty) == 0.0
    assert region_j(empty, pred) == 0.0


def test_seg2bmap_single_pixel_square_and_edges():
    one = np.zeros((6, 6), dtype=bool)
    one[3, 3] = True
    expect = np.zeros((6, 6), dtype=bool)
    expect[2:4, 2:4] = True  # the pixel and its up, left and up-left neighbours
    np.testing.assert_array_equal(seg2bmap(one), expect)

    sq = box((10, 10), 2, 6, 2, 6)
    b = seg2bmap(sq)
    expect = np.zeros((10, 10), dtype=bool)
    expect[5, 2:6] = expect[2:6, 5] = True  # last row and column inside the square
    expect[1, 1:6] = expect[1:6, 1] = True  # the row above / column left, outside
    np.testing.assert_array_equal(b, expect)
    assert b.sum() == 16

    assert not seg2bmap(np.ones((5, 7), dtype=bool)).any()  # image borders are not boundaries
    right = box((5, 7), 0, 5, 6, 7)  # touches the right border
    np.testing.assert_array_equal(np.nonzero(seg2bmap(right))[1], np.full(5, 5))


def test_dilate_is_a_disk():
    m = np.zeros((11, 11), dtype=bool)
    m[5, 5] = True
    d = dilate(m, 2)
    assert d.sum() == 13  # x^2 + y^2 <= 4
    assert d[5, 3] and d[4, 4] and not d[3, 3]


def test_boundary_tolerance_official_value():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((64, 64)) == 1
    assert boundary_tolerance((64, 64), bound_th=3) == 3


def test_boundary_f_cases():
    shape = (64, 64)  # tolerance 1 px
    gt = box(shape, 10, 30, 10, 30)
    empty = np.zeros(shape, dtype=bool)
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(gt, empty) == 0.0 and boundary_f(empty, gt) == 0.0
    # thin one-pixel lines: a 1-row shift is within tolerance, a 3-row shift is not
    line = box(shape, 20, 21, 5, 40)
    assert boundary_f(line, box(shape, 21, 22, 5, 40)) == 1.0
    assert boundary_f(line, box(shape, 23, 24, 5, 40)) == 0.0
    # prediction = ground truth + a far copy: precision 1/2, recall 1 -> F = 2/3
    far = gt | box(shape, 40, 60, 40, 60)
    assert boundary_f(gt, far) == pytest.approx(2 / 3)
    assert boundary_f(far, gt) == pytest.approx(2 / 3)
    # void pixels covering the far copy remove it from the prediction
    assert boundary_f(gt, far, void=box(shape, 39, 61, 39, 61)) == 1.0


def test_mean_recall_decay_hand_computed():
    v = np.arange(1, 9) / 8
    m, r, d = mean_recall_decay(v)
    assert m == pytest.approx(4.5 / 8)
    assert r == pytest.approx(0.5)  # 5/8 .. 8/8 are > 0.5; 4/8 is not
    # n=8: bin edges round(linspace(1, 8, 5)) - 1 = 0, 2, 4, 5, 7 -> first [0..2], last [5..7]
    assert d == pytest.approx(2 / 8 - 7 / 8)
    # n=4: edges 0, 1, 2, 2, 3 -> first [0, 1], last [2, 3]
    assert mean_recall_decay(np.array([1.0, 1.0, 0.0, 0.0]))[2] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_recall_decay(np.array([]))


def test_davis_sequence_and_summary():
    shape = (40, 40)
    gt, pred = [], []
    for t in range(4):
        g = np.zeros(shape, dtype=np.uint8)
        g[5:15, 5 + t : 15 + t] = 1
        g[25:35, 20:30] = 2
        g[0, :] = 255  # void row
        p = np.where(g == 2, 0, g)  # object 2 missed, object 1 exact
        p[0, :] = 1  # predictions on void pixels do not count
        gt.append(g)
        pred.append(p.astype(np.uint8))
    per = davis_sequence(gt, pred)
    assert sorted(per) == [1, 2]
    j1, f1 = per[1]
    j2, f2 = per[2]
    assert len(j1) == 2  # first and last frame are not scored
    np.testing.assert_allclose(j1, 1.0)
    np.testing.assert_allclose(f1, 1.0)
    np.testing.assert_allclose(j2, 0.0)
    np.testing.assert_allclose(f2, 0.0)
    s = davis_summary({f"seq_{k}": v for k, v in per.items()})
    assert s["J-Mean"] == pytest.approx(0.5) and s["F-Mean"] == pytest.approx(0.5)
    assert s["J&F-Mean"] == pytest.approx(0.5) and s["J-Recall"] == pytest.approx(0.5)
    assert list(s) == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    with pytest.raises(ValueError, match="size"):
        davis_sequence(gt, [p[:, :-1] for p in pred])


def test_pck_hits_thresholds():
    gt = np.array([[[0.0, 0.0], [30.0, 40.0], [10.0, 10.0]]])  # span 30 x 40 -> ref 0.6 * 50 = 30
    pred = gt.copy()
    pred[0, 0] += [0.0, 2.9]  # 2.9 <= 0.1 * 30
    pred[0, 1] += [8.0, 0.0]  # hit from alpha 0.3 (9 px)
    pred[0, 2] += [16.0, 0.0]  # beyond 0.5 * 30 = 15
    hits = pck_hits(pred, gt)
    assert hits.shape == (5, 1, 3)
    np.testing.assert_array_equal(hits[:, 0, 0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(hits[:, 0, 1], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(hits[:, 0, 2], [0, 0, 0, 0, 0])


def test_confusion_and_mean_iou():
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 2]])
    conf = confusion(gt, pred, 3)
    assert conf.sum() == 4  # the 255 pixel is ignored
    # class 0: 1 / 2, class 1: 2 / 3, class 2 absent from both -> left out
    assert mean_iou(conf) == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        mean_iou(np.zeros((3, 3), dtype=np.int64))
