"""Frame sampling: the rule's properties, one clip at a time and for a whole batch at once."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sampling import sample_triplet, triplets


def check_sandwich(p: int, c: int, f: int, t: int) -> None:
    """The T-CoRe rule, written out independently of the implementation."""
    assert 0 <= p <= c <= f <= t - 1
    c_lo, c_hi = int(np.floor(0.3 * t + 1e-9)), int(np.floor(0.7 * t + 1e-9)) - 1
    g_lo, g_hi = int(np.floor(0.15 * t + 1e-9)), int(np.floor(0.25 * t + 1e-9))
    if c_hi < c_lo:
        assert p == c == f
        return
    assert c_lo <= c <= c_hi
    assert c - g_hi <= p <= c - g_lo
    assert c + g_lo <= f <= min(c + g_hi, t - 1)


def check_gap(p: int, c: int, f: int, t: int, gmin: int, gmax: int) -> None:
    assert 0 <= p <= c <= f <= t - 1
    hi = min(gmax, (t - 1) // 2)
    lo = min(gmin, hi)
    assert lo <= c - p <= hi and lo <= f - c <= hi


@pytest.mark.parametrize("sampling", ["sandwich", "gap"])
def test_python_rule_properties(sampling: str) -> None:
    rng = np.random.default_rng(0)
    for t in list(range(1, 60)) + [97, 250, 301]:
        for _ in range(60):
            p, c, f = sample_triplet(t, rng, sampling, 4, 12)
            if sampling == "sandwich":
                check_sandwich(p, c, f, t)
            else:
                check_gap(p, c, f, t, 4, 12)
    with pytest.raises(ValueError):
        sample_triplet(0, rng)


def test_sandwich_edges_follow_the_recipe() -> None:
    rng = np.random.default_rng(1)
    assert sample_triplet(1, rng) == (0, 0, 0)  # empty current range: the current frame thrice
    for t in (2, 3):  # ⌊0.25T⌋ = 0: no gap, but a valid current frame
        draws = {sample_triplet(t, rng) for _ in range(50)}
        assert all(p == c == f for p, c, f in draws)
        assert {c for _, c, _ in draws} == set(range((3 * t) // 10, (7 * t) // 10))
    assert {sample_triplet(4, rng) for _ in range(100)} == {(0, 1, 1), (0, 1, 2), (1, 1, 1), (1, 1, 2)}
    draws = [sample_triplet(20, rng) for _ in range(3000)]  # every value of each range is reachable
    assert {c for _, c, _ in draws} == set(range(6, 14))
    assert {c - p for p, c, _ in draws} == {3, 4, 5} and {f - c for _, c, f in draws} == {3, 4, 5}


@pytest.mark.parametrize("sampling", ["sandwich", "gap"])
def test_batched_rule_properties_and_uniformity(sampling: str) -> None:
    """``triplets`` (what the graph's host side runs per batch) keeps the rule for every clip length
    in one call, and each range's values come out uniformly."""
    rng = np.random.default_rng(5)
    ts = np.repeat(np.array(list(range(1, 41)) + [64, 97, 250, 301]), 40)
    for (p, c, f), t in zip(triplets(ts, rng.random((len(ts), 3)), sampling, 4, 12), ts):
        if sampling == "sandwich":
            check_sandwich(int(p), int(c), int(f), int(t))
        else:
            check_gap(int(p), int(c), int(f), int(t), 4, 12)
    draws = triplets(np.full(20000, 40), rng.random((20000, 3)), sampling, 4, 12)
    gaps = draws[:, 1] - draws[:, 0]
    counts = np.bincount(gaps - gaps.min())
    assert len(counts) == (5 if sampling == "sandwich" else 9)  # [6, 10] and [4, 12]
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_one_clip_form_equals_the_batched_rule() -> None:
    ts = np.array([1, 2, 5, 20, 33, 300])
    u = np.random.default_rng(2).random((len(ts), 3))
    batched = triplets(ts, u)
    for t, row, want in zip(ts, u, batched):
        class Fixed:  # a generator that returns the batched call's draws for this clip
            def random(self, shape, row=row):
                return row.reshape(shape)
        assert sample_triplet(int(t), Fixed()) == tuple(int(v) for v in want)
