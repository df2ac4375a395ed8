"""Which 3 frames (past, current, future) a clip of T frames contributes.

Two rules, both in exact integer arithmetic on uniform draws u in [0, 1):

- ``sandwich`` (T-CoRe): current c uniform in [⌊0.3T⌋, ⌊0.7T⌋ − 1]; past = c − g_p with g_p
  uniform in [⌊0.15T⌋, ⌊0.25T⌋]; future = c + g_f with g_f uniform in
  [⌊0.15T⌋, min(⌊0.25T⌋, T − 1 − c)]; the two gaps are drawn independently. When the current
  range is empty (T = 1) all three are frame ⌊T/2⌋. The past range never leaves the clip
  because c ≥ ⌊0.3T⌋ ≥ ⌊0.25T⌋, and the future range is never empty for a valid c.
- ``gap`` (CropMAE/SiamMAE style): g_p, g_f uniform in [g_lo, g_hi] with
  g_hi = min(gap_max, ⌊(T − 1)/2⌋) and g_lo = min(gap_min, g_hi) (short clips get shorter gaps),
  then c uniform in [g_p, T − 1 − g_f].

``⌊0.3T⌋`` is computed as ``(3 * T) // 10`` and so on (float products would round differently
from one place to another). A uniform integer in [lo, hi] is ``lo + min(⌊u · (hi − lo + 1)⌋,
hi − lo)``. ``triplets`` does this for a whole batch at once (the graph's host side and the range
reader call it); ``sample_triplet`` is the one-clip form used by the reference loaders.
"""

from __future__ import annotations

import numpy as np

RULES = ("sandwich", "gap")


def sandwich_ranges(t: int) -> tuple[int, int, int, int]:
    """(current low, current high, gap low, gap high) of the T-CoRe rule for a clip of t frames."""
    return (3 * t) // 10, (7 * t) // 10 - 1, (15 * t) // 100, t // 4


def uniform_int(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Integers uniform in [lo, hi] (elementwise, hi >= lo) from uniforms u in [0, 1)."""
    n = hi - lo + 1
    return lo + np.minimum(np.floor(u * n).astype(np.int64), n - 1)


def triplets(t: np.ndarray, u: np.ndarray, sampling: str = "sandwich", gap_min: int = 4,
             gap_max: int = 48) -> np.ndarray:
    """[B, 3] int64 (past, current, future) for frame counts ``t`` [B] (>= 1) and draws ``u`` [B, 3]."""
    t = np.asarray(t, dtype=np.int64)
    if t.size and t.min() < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {int(t.min())}")
    if sampling == "sandwich":
        c_lo, c_hi, g_lo, g_hi = (3 * t) // 10, (7 * t) // 10 - 1, (15 * t) // 100, t // 4
        valid = c_hi >= c_lo
        c = np.where(valid, uniform_int(u[:, 0], c_lo, np.maximum(c_hi, c_lo)), t // 2)
        gp = uniform_int(u[:, 1], g_lo, g_hi)
        gf = uniform_int(u[:, 2], g_lo, np.maximum(np.minimum(g_hi, t - 1 - c), g_lo))
        return np.stack([c - valid * gp, c, c + valid * gf], axis=1)
    if sampling == "gap":
        hi = np.minimum(gap_max, (t - 1) // 2)
        lo = np.minimum(gap_min, hi)
        gp, gf = uniform_int(u[:, 0], lo, hi), uniform_int(u[:, 1], lo, hi)
        c = uniform_int(u[:, 2], gp, t - 1 - gf)
        return np.stack([c - gp, c, c + gf], axis=1)
    raise ValueError(f"pipeline.sampling: unknown rule '{sampling}' (sandwich or gap)")


def sample_triplet(t: int, rng: np.random.Generator, sampling: str = "sandwich",
                   gap_min: int = 4, gap_max: int = 48) -> tuple[int, int, int]:
    """(past, current, future) frame indices for a clip of ``t`` >= 1 frames."""
    p, c, f = triplets(np.array([t]), rng.random((1, 3)), sampling, gap_min, gap_max)[0]
    return int(p), int(c), int(f)
