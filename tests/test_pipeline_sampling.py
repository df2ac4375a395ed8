"""Frame sampling: the rule's properties in Python and in the DALI graph, and that both agree."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from pipeline.sampling import graph_triplet, sample_triplet


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


def _graph_draws(ts: np.ndarray, sampling: str, reps: int) -> np.ndarray:
    """Run ``graph_triplet`` in a DALI pipeline on frame counts ``ts``; returns [reps*len(ts), 4]."""

    @pipeline_def(batch_size=len(ts), num_threads=1, device_id=None, seed=7)
    def pipe():
        t = fn.external_source(source=lambda: [np.array(v, dtype=np.int64) for v in ts], dtype=types.INT64)
        return (t, *graph_triplet(t, sampling, 4, 12))

    p = pipe()
    p.build()
    rows = []
    for _ in range(reps):
        out = [np.array(o.as_tensor()).reshape(-1) for o in p.run()]
        rows.append(np.stack(out, axis=1))
    return np.concatenate(rows)


@pytest.mark.parametrize("sampling", ["sandwich", "gap"])
def test_dali_graph_rule_properties(sampling: str) -> None:
    ts = np.array(list(range(1, 41)) + [64, 97, 250, 301], dtype=np.int64)
    for t, p, c, f in _graph_draws(ts, sampling, 40):
        if sampling == "sandwich":
            check_sandwich(int(p), int(c), int(f), int(t))
        else:
            check_gap(int(p), int(c), int(f), int(t), 4, 12)


@pytest.mark.parametrize("sampling", ["sandwich", "gap"])
def test_dali_graph_matches_python_distribution(sampling: str) -> None:
    t = 40
    graph = _graph_draws(np.full(64, t), sampling, 150)[:, 1:]
    rng = np.random.default_rng(3)
    py = np.array([sample_triplet(t, rng, sampling, 4, 12) for _ in range(len(graph))])
    for col in range(3):  # marginals of past, current, future: total variation distance
        support = np.arange(t)
        h1 = np.bincount(graph[:, col], minlength=t)[support] / len(graph)
        h2 = np.bincount(py[:, col], minlength=t)[support] / len(py)
        assert 0.5 * np.abs(h1 - h2).sum() < 0.06  # same-distribution noise here is ~0.03
