"""Clip samplers (pipeline/clips.py): geometry and labels against plain-Python references."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.clips import (
    CSTPSampling,
    DualVarSampling,
    LocalGlobalSampling,
    cstp_clips,
    cstp_draws,
    dualvar_clips,
    dualvar_draws,
    permutations,
    sample_cstp,
    sample_dualvar,
    sample_localglobal,
    uniform_int,
)

N = 4000
# frame counts from a 1-frame clip to a 10-s 30-fps one; frames 128 px high, 4:3 to 16:9 and square
T = np.random.default_rng(1).choice([1, 7, 15, 16, 30, 31, 61, 64, 120, 241, 300], N)
H = np.full(N, 128)
W = np.random.default_rng(2).choice([128, 171, 227], N)


def _inside(boxes: np.ndarray, w: np.ndarray, h: np.ndarray) -> bool:
    x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
    return bool((x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
                and (x1 > x0).all() and (y1 > y0).all())


def test_uniform_int_covers_both_ends_and_permutation_table():
    u = np.array([0.0, 0.2, 0.5, 0.999999, 1.0])
    assert uniform_int(u, 3, 5).tolist() == [3, 3, 4, 5, 5]  # u = 1.0 (DALI's bound) still gives hi
    assert permutations(3).tolist()[:2] == [[0, 1, 2], [0, 2, 1]] and len(permutations(3)) == 6


def test_dualvar_matches_the_code_rule_draw_for_draw():
    cfg = DualVarSampling()
    d = dualvar_draws(np.random.default_rng(0), N, cfg)
    out = dualvar_clips(d, T, H, W, 30.0, cfg)
    for i in range(0, N, 7):  # plain-Python reference of local_dataset.py's frame_sampler + rand_flip
        t = int(T[i])
        rev = d["reverse"][i] < 0.5
        for k in range(2):
            centre = min(int(d["centre"][i, k] * t), t - 1)
            ref = [min(max(centre + (j - 8) * 4, 0), t - 1) for j in range(16)]
            assert out["frames"][i, k].tolist() == (ref[::-1] if rev else ref)
        assert out["frames"][i, 2].tolist() == out["frames"][i, 0].tolist()  # c3 = c1's frames
        assert out["reversed"][i] == rev
        x0 = min(int(d["crop"][i, 0, 0] * 60), 59)
        assert out["boxes"][i, 0, 0] == pytest.approx(x0 * W[i] / 171, rel=1e-6)


def test_dualvar_geometry_and_rates():
    out = sample_dualvar(T, H, W, 30.0, np.random.default_rng(3))
    f = out["frames"]
    assert f.min() >= 0 and (f <= (T - 1)[:, None, None]).all()
    steps = np.diff(f, axis=-1)
    inner = ((f > 0) & (f < (T - 1)[:, None, None])).all(-1)  # clips that no clamping touched
    assert inner.sum() > N // 2 and (np.abs(steps[inner]) == 4).all()
    assert (np.abs(steps) <= 4).all()
    assert ((steps <= 0).all(-1).all(-1) | ~out["reversed"]).all()  # reversed clips never go forward
    box = out["boxes"]
    assert _inside(box, W[:, None], H[:, None])
    assert np.allclose(box[..., 2] - box[..., 0], 112 * W[:, None] / 171)
    assert np.allclose(box[..., 3] - box[..., 1], 112 * H[:, None] / 128)
    assert abs(out["reversed"].mean() - 0.5) < 0.04 and abs(out["plain"][:, 0].mean() - 0.2) < 0.03
    assert not out["plain"][:, 1:].any()
    assert sorted(map(tuple, np.unique(out["perm"], axis=0).tolist())) == [(0, 1), (1, 0)]
    assert abs((out["perm"][:, 0] == 0).mean() - 0.5) < 0.04


def test_dualvar_short_video_repeats_edge_frames():
    out = sample_dualvar(np.array([3]), np.array([128]), np.array([171]), 25.0, np.random.default_rng(0))
    assert set(out["frames"].ravel().tolist()) <= {0, 1, 2}


def test_cstp_overlap_classes_equal_measured_overlaps():
    cfg = CSTPSampling()
    out = sample_cstp(T, H, W, 30.0, np.random.default_rng(4), cfg)
    b = out["boxes"]
    assert _inside(b, W[:, None], H[:, None])
    wh = b[..., 2:] - b[..., :2]
    assert np.array_equal(wh[:, 0], wh[:, 1])  # equal crop sizes
    ix = np.minimum(b[:, 0, 2], b[:, 1, 2]) - np.maximum(b[:, 0, 0], b[:, 1, 0])
    iy = np.minimum(b[:, 0, 3], b[:, 1, 3]) - np.maximum(b[:, 0, 1], b[:, 1, 1])
    measured = ix.clip(0) * iy.clip(0) / (wh[:, 0, 0] * wh[:, 0, 1])
    rate = (5 - out["spatial"]) / 5
    # s_h = round(rate * w * h / s_w): the area is off by at most s_w / 2 pixels
    assert (np.abs(measured - rate) <= 0.5 / wh[:, 0, 1] + 1e-9).all()
    assert set(np.unique(out["spatial"]).tolist()) == {0, 1, 2, 3, 4}
    area = wh[:, 0, 0] * wh[:, 0, 1] / (W * H)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0


def test_cstp_temporal_class_equals_measured_frame_overlap():
    out = sample_cstp(T, H, W, 30.0, np.random.default_rng(5))
    f, pb, tem = out["frames"], out["pb"], out["temporal"]
    assert f.min() >= 0 and (f <= (T - 1)[:, None, None]).all()
    max_pb = np.array([min(3, int(math.log2(t / 15))) if t >= 15 else 0 for t in T])
    assert (pb <= max_pb).all() and (pb >= 0).all()
    rate, span = 2 ** pb, 15 * 2 ** pb
    loop = span >= T
    assert (tem[loop] == 0).all() and (f[loop, 0] == f[loop, 1]).all()
    ok = ~loop
    assert (np.diff(f[ok], axis=-1) == rate[ok, None, None]).all()  # one playback rate for both clips
    shift = np.abs(f[ok, 1, 0] - f[ok, 0, 0])
    assert np.array_equal((span[ok] - shift) * 5, (5 - tem[ok]) * span[ok])  # exact overlap share
    # both directions occur, and all five classes on long videos
    assert ((f[ok, 1, 0] > f[ok, 0, 0]).any() and (f[ok, 1, 0] < f[ok, 0, 0]).any())
    assert set(np.unique(tem[T >= 241]).tolist()) == {0, 1, 2, 3, 4}


def test_cstp_loop_rule_restarts_at_frame_zero():
    cfg = CSTPSampling()
    d = cstp_draws(np.random.default_rng(0), 1, cfg)
    d["pb"][:] = 0.99  # the highest allowed rate: T = 30 -> pb 1, rate 2, span 30 = T -> loop
    out = cstp_clips(d, np.array([30]), np.array([128]), np.array([171]), 30.0, cfg)
    assert out["pb"][0] == 1 and out["temporal"][0] == 0
    assert out["frames"][0, 0].tolist() == list(range(0, 30, 2)) + [0]


def test_cstp_temporal_distribution_matches_the_redraw_loop():
    """Uniform over valid (class, direction) pairs = the code's ``while True`` redraw loop."""
    t, span, n = 100, 30, 20000
    rng = random.Random(0)
    ref = np.zeros(5)
    for _ in range(n):
        s1 = rng.randint(0, t - span - 1)
        while True:
            k, d = rng.randint(0, 4), rng.randint(0, 1)
            s2 = s1 + (1 if d else -1) * (k * span) // 5
            if 0 <= s2 <= t - 1 - span:
                break
        ref[k] += 1
    cfg = CSTPSampling(max_pb=1)
    d = cstp_draws(np.random.default_rng(0), n, cfg)
    d["pb"][:] = 0.99  # rate 2, span 30
    out = cstp_clips(d, np.full(n, t), np.full(n, 128), np.full(n, 171), 30.0, cfg)
    assert np.abs(np.bincount(out["temporal"], minlength=5) / n - ref / n).max() < 0.02


def test_cstp_labels_and_flags():
    out = sample_cstp(T, H, W, 30.0, np.random.default_rng(6))
    assert set(np.unique(out["rot"]).tolist()) == {0, 1, 2, 3}
    assert abs(out["strong"].mean() - 0.3) < 0.03 and abs(out["flip"].mean() - 0.5) < 0.03


def test_sampling_is_a_function_of_the_draws_and_rejects_bad_input():
    a = sample_cstp(T[:50], H[:50], W[:50], 30.0, np.random.default_rng(9))
    b = sample_cstp(T[:50], H[:50], W[:50], 30.0, np.random.default_rng(9))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="num_frames"):
        sample_dualvar(np.array([0]), np.array([128]), np.array([171]), 30.0, np.random.default_rng(0))


def test_ref_fps_scales_strides():
    cfg = DualVarSampling(ref_fps=15.0)
    out = sample_dualvar(np.full(8, 600), np.full(8, 128), np.full(8, 171), 30.0, np.random.default_rng(0), cfg)
    f = out["frames"][:, :2]
    inner = ((f > 0) & (f < 599)).all(-1)
    assert inner.any() and (np.abs(np.diff(f[inner], axis=-1)) == 8).all()  # 4 frames at 15 fps = 8 at 30


def test_localglobal_windows_boxes_and_order():
    cfg = LocalGlobalSampling()
    out = sample_localglobal(T, H, W, 25.0, np.random.default_rng(7), cfg)
    g, loc, m = out["global_frames"], out["local_frames"], cfg.num_local
    assert (np.diff(g, axis=1) >= 0).all() and g.min() >= 0 and (g <= (T - 1)[:, None]).all()
    assert (g[:, 0] <= T // 16).all() and (g[:, -1] >= T - 1 - T // 16 - 1).all()  # spread over the video
    seg_lo = out["perm"] * T[:, None] // m
    seg_hi = np.maximum((out["perm"] + 1) * T[:, None] // m - 1, seg_lo)
    assert (loc >= seg_lo[..., None]).all() and (loc <= seg_hi[..., None]).all()
    assert (permutations(m)[out["order"]] == out["perm"]).all()
    times = out["local_times"]
    assert times.min() >= 0 and times.max() <= 1 and (times[..., 1] > times[..., 0]).all()
    long = T >= 120  # distinct segments: the windows' time order is the permutation
    assert (np.argsort(times[long, :, 0], 1) == np.argsort(out["perm"][long], 1)).all()
    gb, lb = out["global_box"], out["local_box_px"]
    assert _inside(gb, W, H)
    assert (lb[..., :2] >= gb[:, None, :2]).all() and (lb[..., 2:] <= gb[:, None, 2:]).all()
    norm = out["local_boxes"]
    gw, gx = (gb[:, 2] - gb[:, 0])[:, None], gb[:, 0][:, None]
    x0 = np.where(out["flip"][:, None], 1 - norm[..., 2], norm[..., 0])  # undo the flip
    assert np.allclose(gx + x0 * gw, lb[..., 0], atol=1e-3)


def test_localglobal_time_windows_cover_the_global_frames_inside_them():
    out = sample_localglobal(T, H, W, 25.0, np.random.default_rng(8))
    g, loc, times = out["global_frames"], out["local_frames"], out["local_times"]
    fg = g.shape[1]
    for i in range(0, N, 11):
        for m in range(loc.shape[1]):
            a, b = loc[i, m, 0], loc[i, m, -1]
            for k in np.nonzero((g[i] >= a) & (g[i] <= b))[0]:
                # global frame k's cell [k / Fg, (k + 1) / Fg) meets the local window
                assert k / fg <= times[i, m, 1] + 1e-6 and (k + 1) / fg >= times[i, m, 0] - 1e-6
