"""Which 3 frames (past, current, future) a clip of T frames contributes.

Two rules, both exact in integer arithmetic so that the DALI graph and the Python reference
draw from the same distribution:

- ``sandwich`` (T-CoRe): current c uniform in [⌊0.3T⌋, ⌊0.7T⌋ − 1]; past = c − g_p with g_p
  uniform in [⌊0.15T⌋, ⌊0.25T⌋]; future = c + g_f with g_f uniform in
  [⌊0.15T⌋, min(⌊0.25T⌋, T − 1 − c)]; the two gaps are drawn independently. When the current
  range is empty (T = 1) all three are frame ⌊T/2⌋. The past range never leaves the clip
  because c ≥ ⌊0.3T⌋ ≥ ⌊0.25T⌋, and the future range is never empty for a valid c.
- ``gap`` (CropMAE/SiamMAE style): g_p, g_f uniform in [g_lo, g_hi] with
  g_hi = min(gap_max, ⌊(T − 1)/2⌋) and g_lo = min(gap_min, g_hi) (short clips get shorter gaps),
  then c uniform in [g_p, T − 1 − g_f].

``⌊0.3T⌋`` is computed as ``(3 * T) // 10`` and so on: float products would round differently
on the two sides. Uniform integers in [lo, hi] are ``lo + min(⌊u · (hi − lo + 1)⌋, hi − lo)``
with u uniform in [0, 1) (DALI's integer uniform can return its upper bound).
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath


def sandwich_ranges(t: int) -> tuple[int, int, int, int]:
    """(current low, current high, gap low, gap high) of the T-CoRe rule for a clip of t frames."""
    return (3 * t) // 10, (7 * t) // 10 - 1, (15 * t) // 100, t // 4


def sample_triplet(t: int, rng: np.random.Generator, sampling: str = "sandwich",
                   gap_min: int = 4, gap_max: int = 48) -> tuple[int, int, int]:
    """(past, current, future) frame indices for a clip of ``t`` >= 1 frames."""
    if t < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {t}")
    if sampling == "sandwich":
        c_lo, c_hi, g_lo, g_hi = sandwich_ranges(t)
        if c_hi < c_lo:
            c = t // 2
            return c, c, c
        c = int(rng.integers(c_lo, c_hi + 1))
        past = c - int(rng.integers(g_lo, g_hi + 1))
        future = c + int(rng.integers(g_lo, min(g_hi, t - 1 - c) + 1))
        return past, c, future
    if sampling == "gap":
        hi = min(gap_max, (t - 1) // 2)
        lo = min(gap_min, hi)
        gp, gf = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        c = int(rng.integers(gp, t - gf))
        return c - gp, c, c + gf
    raise ValueError(f"pipeline.sampling: unknown rule '{sampling}' (sandwich or gap)")


def _uniform_int(lo, hi):
    """DALI graph: an INT64 uniform in [lo, hi] per sample (lo, hi INT64 nodes, hi >= lo)."""
    n = hi - lo + 1
    u = fn.random.uniform(range=[0.0, 1.0], dtype=types.FLOAT)
    k = fn.cast(dmath.floor(u * fn.cast(n, dtype=types.FLOAT)), dtype=types.INT64)
    return lo + dmath.min(k, n - 1)


def graph_triplet(t, sampling: str = "sandwich", gap_min: int = 4, gap_max: int = 48):
    """DALI graph: (past, current, future) INT64 scalars from the clip's frame count ``t`` (INT64)."""
    if sampling == "sandwich":
        c_lo, c_hi, g_lo, g_hi = (3 * t) // 10, (7 * t) // 10 - 1, (15 * t) // 100, t // 4
        valid = fn.cast(c_hi >= c_lo, dtype=types.INT64)
        c_draw = _uniform_int(c_lo, dmath.max(c_hi, c_lo))
        c = valid * c_draw + (1 - valid) * (t // 2)
        gp = _uniform_int(g_lo, g_hi)
        gf = _uniform_int(g_lo, dmath.max(dmath.min(g_hi, t - 1 - c), g_lo))
        return c - valid * gp, c, c + valid * gf
    if sampling == "gap":
        hi = dmath.min(t * 0 + gap_max, (t - 1) // 2)
        lo = dmath.min(t * 0 + gap_min, hi)
        gp, gf = _uniform_int(lo, hi), _uniform_int(lo, hi)
        c = _uniform_int(gp, t - 1 - gf)
        return c - gp, c, c + gf
    raise ValueError(f"pipeline.sampling: unknown rule '{sampling}' (sandwich or gap)")
