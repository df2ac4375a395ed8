"""Clip sampling rules of DualVar, CSTP and the local-global method, and the clip batch contract.

Each rule is split in two so that the DALI workloads can be checked against it draw for draw:
``<rule>_draws(rng, batch, cfg)`` takes every random number the rule needs as uniforms in
[0, 1) with fixed shapes (rejection loops become a fixed number of candidate rounds), and
``<rule>_clips(draws, num_frames, height, width, fps, cfg)`` is a pure, vectorised numpy function
of them. ``sample_<rule>(...)`` does both. Inputs are per-video arrays ``[B]`` (frame count,
stored frame height and width, frame rate). Uniform integers in [lo, hi] are
``lo + min(floor(u * (hi - lo + 1)), hi - lo)``, as in ``pipeline/sampling.py``.

Conventions: frame indices are 0-based into the stored frames; boxes are float32
``(x0, y0, x1, y1)`` in stored-frame pixels unless the key says "normalised"; a clip is read
with one box for all its frames. Strides are in stored frames; with ``ref_fps`` > 0 they are
scaled by ``round(fps / ref_fps)`` (at least 1), so a shard resampled to a lower rate keeps the
strides' duration where it can.

Batch contract (what a loader delivers to ``model/dualvar.py``, ``cstp.py``, ``localglobal.py``;
clips are normalised float ``[.., 3, F, H, W]``; labels and geometry may stay CPU tensors):

- dualvar: ``clips [B, 3, 3, F, H, W]`` (c1, c2, c3), ``perm [B, S]`` int64 (S = 2 segments).
- cstp: ``clips [B, 2, 3, F, H, W]``, ``spatial [B]``, ``temporal [B]``, ``pb [B]``, ``rot [B, 2]``
  int64 class labels.
- localglobal: ``global [B, 3, Fg, Hg, Wg]``, ``local [B, M, 3, Fl, Hl, Wl]``, ``local_boxes
  [B, M, 4]`` and ``local_times [B, M, 2]`` (normalised to the delivered global clip), ``order
  [B]`` int64.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


def uniform_int(u: np.ndarray, lo, hi) -> np.ndarray:
    """Integers in [lo, hi] (hi >= lo) from uniforms ``u`` in [0, 1) (int64, broadcast)."""
    n = np.asarray(hi, np.int64) - np.asarray(lo, np.int64) + 1
    return np.asarray(lo, np.int64) + np.minimum(np.floor(u * n).astype(np.int64), n - 1)


def permutations(n: int) -> np.ndarray:
    """All permutations of ``range(n)`` in lexicographic order ``[n!, n]``: class k is row k."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)


def scaled_stride(stride, fps: np.ndarray, ref_fps: float) -> np.ndarray:
    """``stride * max(1, round(fps / ref_fps))`` when ``ref_fps`` > 0, else ``stride`` (int64)."""
    stride = np.asarray(stride, np.int64)
    if ref_fps <= 0:
        return stride * np.ones_like(np.asarray(fps), dtype=np.int64)
    return stride * np.maximum(1, np.rint(np.asarray(fps, np.float64) / ref_fps).astype(np.int64))


def _batch_inputs(num_frames, height, width, fps) -> tuple[np.ndarray, ...]:
    t = np.asarray(num_frames, np.int64).reshape(-1)
    h, w = np.asarray(height, np.int64).reshape(-1), np.asarray(width, np.int64).reshape(-1)
    f = np.broadcast_to(np.asarray(fps, np.float64), t.shape)
    if (t < 1).any() or (h < 1).any() or (w < 1).any():
        raise ValueError(f"clip sampling: every video needs >= 1 frame of >= 1x1 pixels "
                         f"(got num_frames {t.tolist()}, sizes {h.tolist()}x{w.tolist()})")
    return t, h, w, f


def random_boxes(u_area, u_ratio, u_swap, u_x, u_y, area_lo, area_hi, ratio, width, height):
    """CSTP-style random crops: area U(lo, hi) x frame, aspect U(ratio), w/h swapped with p 0.5.

    Uniforms are ``[B, R]`` candidate rounds; ``width``/``height`` ``[B]`` bound the crop. The first
    candidate that fits wins; if none does, the first is shrunk (aspect kept) to fit. Returns
    integer ``(x0, y0, w, h)`` arrays ``[B]``.
    """
    wb, hb = width[:, None].astype(np.float64), height[:, None].astype(np.float64)
    area = (area_lo + (area_hi - area_lo) * u_area) * wb * hb
    aspect = ratio[0] + (ratio[1] - ratio[0]) * u_ratio
    w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    w, h = np.where(u_swap < 0.5, h, w), np.where(u_swap < 0.5, w, h)
    fits = (w <= width[:, None]) & (h <= height[:, None]) & (w >= 1) & (h >= 1)
    k = np.where(fits.any(1), fits.argmax(1), 0)
    rows = np.arange(len(k))
    w, h = w[rows, k], h[rows, k]
    shrink = np.minimum(1.0, np.minimum(width / np.maximum(w, 1), height / np.maximum(h, 1)))
    w = np.clip(np.floor(w * shrink).astype(np.int64), 1, width)
    h = np.clip(np.floor(h * shrink).astype(np.int64), 1, height)
    x0 = uniform_int(u_x[rows, k], 0, width - w)
    y0 = uniform_int(u_y[rows, k], 0, height - h)
    return x0, y0, w, h


def _xyxy(x0, y0, w, h) -> np.ndarray:
    return np.stack([x0, y0, x0 + w, y0 + h], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------- DualVar
@dataclass(frozen=True)
class DualVarSampling:
    """DualVar's clips (``dataset/local_dataset.py``, ``*_2CLIP_Stage_Prototype``)."""

    frames: int = 16  # frames per clip
    stride: int = 4  # code ``--ds 4``: a clip spans 61 frames
    reverse_p: float = 0.5  # code ``--rand_flip``: c1 and c2 reversed together
    plain_p: float = 0.2  # code: c1 gets only the crop (no colour jitter, no blur) with p 0.2
    resize_hw: tuple[int, int] = (128, 171)  # code ``A.Scale((128, 171))`` before the crop
    crop: int = 112
    segments: int = 2  # shuffle-rank: c3 cut into 2 halves of 8 frames, permuted
    ref_fps: float = 0.0  # 0: stride in stored frames (code: the source rate)


def dualvar_draws(rng: np.random.Generator, batch: int, cfg: DualVarSampling) -> Arrays:
    """Uniforms of ``dualvar_clips``."""
    return {"centre": rng.random((batch, 2)), "reverse": rng.random(batch), "plain": rng.random(batch),
            "crop": rng.random((batch, 3, 2)), "perm": rng.random(batch)}


def dualvar_clips(d: Arrays, num_frames, height, width, fps, cfg: DualVarSampling) -> Arrays:
    """c1, c2 at independent centres (indices clamped to the video, edge frames repeat), both
    reversed with ``reverse_p``; c3 = c1's frames. Crops: a ``crop`` square of the frame resized
    to ``resize_hw``, i.e. a box of ``crop * W / 171`` x ``crop * H / 128`` stored pixels.

    Returns ``frames [B, 3, F]``, ``boxes [B, 3, 4]``, ``reversed [B]``, ``plain [B, 3]`` (True:
    crop only), ``perm [B, S]`` (shuffled clip's segment k holds c3's segment ``perm[k]``).
    """
    t, h, w, f = _batch_inputs(num_frames, height, width, fps)
    stride = scaled_stride(cfg.stride, f, cfg.ref_fps)
    centre = uniform_int(d["centre"], 0, t[:, None] - 1)  # [B, 2]
    offs = (np.arange(cfg.frames) - cfg.frames // 2)[None, None] * stride[:, None, None]
    idx = np.clip(centre[..., None] + offs, 0, (t - 1)[:, None, None])
    rev = d["reverse"] < cfg.reverse_p
    idx = np.where(rev[:, None, None], idx[..., ::-1], idx)
    frames = np.concatenate([idx, idx[:, :1]], axis=1)
    rh, rw = cfg.resize_hw
    cx = uniform_int(d["crop"][..., 0], 0, rw - cfg.crop)
    cy = uniform_int(d["crop"][..., 1], 0, rh - cfg.crop)
    sx, sy = (w / rw)[:, None], (h / rh)[:, None]
    boxes = np.stack([cx * sx, cy * sy, (cx + cfg.crop) * sx, (cy + cfg.crop) * sy], -1).astype(np.float32)
    plain = np.zeros((len(t), 3), bool)
    plain[:, 0] = d["plain"] < cfg.plain_p
    table = permutations(cfg.segments)
    perm = table[uniform_int(d["perm"], 0, len(table) - 1)]
    return {"frames": frames, "boxes": boxes, "reversed": rev, "plain": plain, "perm": perm}


def sample_dualvar(num_frames, height, width, fps, rng: np.random.Generator,
                   cfg: DualVarSampling = DualVarSampling()) -> Arrays:
    """``dualvar_clips`` on fresh draws."""
    return dualvar_clips(dualvar_draws(rng, np.size(num_frames), cfg), num_frames, height, width, fps, cfg)


# ------------------------------------------------------------------------------------------- CSTP
@dataclass(frozen=True)
class CSTPSampling:
    """CSTP's clip pair (``data_process/datasets.py``, ``ClipRandomSizedCropOverlap``)."""

    frames: int = 16
    max_pb: int = 3  # playback rates 2**pb in {1, 2, 4, 8}
    levels: int = 5  # overlap classes k in 0..4 -> rate (5 - k) / 5 in {1.0, 0.8, 0.6, 0.4, 0.2}
    area: tuple[float, float] = (0.2, 1.0)  # crop 1 area share of the frame
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    strong_p: float = 0.3  # per clip: rotation +-10, jitter, grey, blur, flip; else flip only
    rounds: int = 64  # candidate rounds of the rejection loops (code: unbounded while loops)
    ref_fps: float = 0.0  # 0: rates in stored frames (code: Kinetics at 30 fps)


def cstp_draws(rng: np.random.Generator, batch: int, cfg: CSTPSampling) -> Arrays:
    """Uniforms of ``cstp_clips``."""
    r = cfg.rounds
    return {"pb": rng.random(batch), "start": rng.random(batch), "tem": rng.random(batch),
            "rot": rng.random((batch, 2)), "flip": rng.random((batch, 2)), "strong": rng.random((batch, 2)),
            "crop": rng.random((batch, 5, r)), "spa": rng.random((batch, 3, r))}


def cstp_temporal(d: Arrays, t: np.ndarray, f: np.ndarray, cfg: CSTPSampling) -> Arrays:
    """Playback label, temporal class, and both clips' frame indices ``[B, 2, F]``.

    ``pb = U{0..min(max_pb, floor(log2(T / (F - 1))))}``, rate r = 2**pb, span (F - 1) r. Clip 2
    starts ``floor(k * span / levels)`` frames before or after clip 1 (3 k r: exact for F = 16),
    so the clips' time ranges overlap by exactly (levels - k) / levels. (k, direction) is uniform
    over the pairs that keep clip 2 inside the video, as the code's redraw loop is. A video of at
    most ``span`` frames loops (indices restart at 0) and gets k = 0 (code). The code's Kinetics
    and UCF readers take clip 2 from clip 1's start; this is the folder reader's correct rule.
    """
    q = np.maximum(t // (cfg.frames - 1), 1)
    max_pb = np.minimum(cfg.max_pb, np.floor(np.log2(q)).astype(np.int64))
    pb = uniform_int(d["pb"], 0, max_pb)
    rate = (2 ** pb) * scaled_stride(1, f, cfg.ref_fps)
    span = (cfg.frames - 1) * rate
    loop = t <= span
    start1 = np.where(loop, 0, uniform_int(d["start"], 0, np.maximum(t - 1 - span, 0)))
    k = np.repeat(np.arange(cfg.levels), 2)[None]  # candidate (class, direction) pairs
    sign = np.tile([-1, 1], cfg.levels)[None]
    start2 = start1[:, None] + sign * ((k * span[:, None]) // cfg.levels)
    valid = (start2 >= 0) & (start2 <= (t - 1 - span)[:, None])
    pick = np.argmax(np.cumsum(valid, 1) > uniform_int(d["tem"], 0, np.maximum(valid.sum(1) - 1, 0))[:, None], 1)
    rows = np.arange(len(t))
    tem = np.where(loop, 0, k[0, pick])
    start2 = np.where(loop, 0, start2[rows, pick])
    steps = np.arange(cfg.frames)[None] * rate[:, None]
    wrap = rate * -(-t // rate)  # code: restart at frame 0 once an index reaches T
    looped = steps % wrap[:, None]
    c1 = np.where(loop[:, None], looped, start1[:, None] + steps)
    c2 = np.where(loop[:, None], looped, start2[:, None] + steps)
    return {"frames": np.stack([c1, c2], 1), "pb": pb, "temporal": tem, "rate": rate}


def cstp_spatial(d: Arrays, h: np.ndarray, w: np.ndarray, cfg: CSTPSampling) -> Arrays:
    """Two equal-size crops whose overlap is a drawn share of their area; ``boxes [B, 2, 4]``.

    Crop 1: ``random_boxes``. Class k -> rate g = (levels - k) / levels; overlap width
    ``s_w = U{ceil(g w)..w}``, height ``s_h = round(g w h / s_w)`` (<= h), a corner drawn, and crop 2
    shifted diagonally by ``(w - s_w, h - s_h)`` towards it, so the overlap is exactly
    ``s_w x s_h`` = g w h up to the rounding of s_h. (k, corner, s_w) are redrawn until crop 2 is
    inside the frame (code); after ``rounds`` failures crop 2 = crop 1 and k = 0. The code's
    ``s_w >= int(g w)`` can make s_h exceed h (then the overlap is not s_w x s_h): we use ceil.
    """
    c = d["crop"]
    x1, y1, cw, ch = random_boxes(c[:, 0], c[:, 1], c[:, 2], c[:, 3], c[:, 4], cfg.area[0], cfg.area[1],
                                  cfg.ratio, w, h)
    s = d["spa"]
    k = uniform_int(s[:, 0], 0, cfg.levels - 1)  # [B, R]
    num = (cfg.levels - k) * cw[:, None]  # g w = num / levels
    sw = uniform_int(s[:, 2], -(-num // cfg.levels), cw[:, None])
    sh = np.clip((2 * num * ch[:, None] + cfg.levels * sw) // (2 * cfg.levels * sw), 1, ch[:, None])
    corner = uniform_int(s[:, 1], 0, 3)
    dx = np.where(corner % 2 == 1, 1, -1) * (cw[:, None] - sw)
    dy = np.where(corner >= 2, 1, -1) * (ch[:, None] - sh)
    x2, y2 = x1[:, None] + dx, y1[:, None] + dy
    ok = (x2 >= 0) & (y2 >= 0) & (x2 + cw[:, None] <= w[:, None]) & (y2 + ch[:, None] <= h[:, None])
    first = ok.argmax(1)
    rows, found = np.arange(len(w)), ok.any(1)
    x2 = np.where(found, x2[rows, first], x1)
    y2 = np.where(found, y2[rows, first], y1)
    spatial = np.where(found, k[rows, first], 0)
    boxes = np.stack([_xyxy(x1, y1, cw, ch), _xyxy(x2, y2, cw, ch)], 1)
    return {"boxes": boxes, "spatial": spatial}


def cstp_clips(d: Arrays, num_frames, height, width, fps, cfg: CSTPSampling) -> Arrays:
    """The clip pair: ``frames [B, 2, F]``, ``boxes [B, 2, 4]`` (unrotated frame), ``rot [B, 2]``
    (counter-clockwise quarter turns, PIL's ``ROTATE_90`` for 1), ``flip [B, 2]``,
    ``strong [B, 2]``, labels ``spatial``, ``temporal``, ``pb`` ``[B]`` and ``rate [B]``.

    The code rotates frames before cropping and crops both clips with boxes drawn in clip 1's
    rotated frame, so with different rotations the two boxes cover different content. Here boxes
    are drawn in the stored frame and each cropped clip is rotated afterwards; as the crop's
    aspect distribution is symmetric under w/h swap this is rotate-then-crop with the box mapped
    into the rotated frame, and the spatial label is the true content overlap.
    """
    t, h, w, f = _batch_inputs(num_frames, height, width, fps)
    out = cstp_temporal(d, t, f, cfg)
    out.update(cstp_spatial(d, h, w, cfg))
    out["rot"] = uniform_int(d["rot"], 0, 3)
    out["flip"] = d["flip"] < 0.5
    out["strong"] = d["strong"] < cfg.strong_p
    return out


def sample_cstp(num_frames, height, width, fps, rng: np.random.Generator,
                cfg: CSTPSampling = CSTPSampling()) -> Arrays:
    """``cstp_clips`` on fresh draws."""
    return cstp_clips(cstp_draws(rng, np.size(num_frames), cfg), num_frames, height, width, fps, cfg)


# ------------------------------------------------------------------------------------ local-global
@dataclass(frozen=True)
class LocalGlobalSampling:
    """Our reading of the controllable local-global views (no official code exists).

    One sparse global clip spread over the whole video and M dense local clips, local clip i in
    the ``perm[i]``-th of M equal time segments (so their temporal order is a permutation class),
    each with its box inside the global box. Every parameter is known, so each local clip's time
    window and box are exact in the global clip's coordinates.
    """

    global_frames: int = 16
    local_frames: int = 16
    num_local: int = 3  # M; the order task has M! classes
    local_stride: tuple[int, int] = (2, 4)  # U{lo..hi}, reduced to fit the segment (at least 1)
    global_area: tuple[float, float] = (0.4, 1.0)  # share of the frame
    local_area: tuple[float, float] = (0.1, 0.4)  # share of the global box
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5  # one horizontal flip per video, for the global and all local clips
    rounds: int = 16
    ref_fps: float = 0.0


def localglobal_draws(rng: np.random.Generator, batch: int, cfg: LocalGlobalSampling) -> Arrays:
    """Uniforms of ``localglobal_clips``."""
    m, r = cfg.num_local, cfg.rounds
    return {"offset": rng.random(batch), "perm": rng.random(batch), "flip": rng.random(batch),
            "stride": rng.random((batch, m)), "start": rng.random((batch, m)),
            "gbox": rng.random((batch, 5, r)), "lbox": rng.random((batch, m, 5, r))}


def localglobal_times(d: Arrays, t: np.ndarray, f: np.ndarray, cfg: LocalGlobalSampling) -> Arrays:
    """Frame indices and each local clip's window in the global clip's normalised time.

    Global frame k = ``(k T + o) // Fg`` with o = U{0..T-1}: source time s maps to global time
    ``(s - o / Fg) / T`` in [0, 1), frame k covering [k / Fg, (k + 1) / Fg). Local clip i lies in
    segment ``perm[i]`` = frames ``[p T // M, (p + 1) T // M - 1]``, stride U(local_stride) shrunk
    to fit, start uniform, indices clamped to the segment; its window is frames [a, b + 1).
    """
    m, fl, fg = cfg.num_local, cfg.local_frames, cfg.global_frames
    o = uniform_int(d["offset"], 0, t - 1)
    gidx = (np.arange(fg)[None] * t[:, None] + o[:, None]) // fg
    table = permutations(m)
    order = uniform_int(d["perm"], 0, len(table) - 1)
    perm = table[order]  # [B, M]
    lo, hi = perm * t[:, None] // m, (perm + 1) * t[:, None] // m - 1
    hi = np.maximum(hi, lo)
    s_lo, s_hi = scaled_stride(cfg.local_stride[0], f, cfg.ref_fps), scaled_stride(cfg.local_stride[1], f, cfg.ref_fps)
    stride = uniform_int(d["stride"], s_lo[:, None], s_hi[:, None])
    stride = np.maximum(1, np.minimum(stride, (hi - lo) // max(fl - 1, 1)))
    span = (fl - 1) * stride
    start = uniform_int(d["start"], lo, np.maximum(lo, hi - span))
    lidx = np.minimum(start[..., None] + np.arange(fl) * stride[..., None], hi[..., None])
    shift = o[:, None] / fg
    times = np.stack([lidx[..., 0] - shift, lidx[..., -1] + 1 - shift], -1) / t[:, None, None]
    return {"global_frames": gidx, "local_frames": lidx, "local_times": np.clip(times, 0, 1).astype(np.float32),
            "order": order, "perm": perm}


def localglobal_boxes(d: Arrays, h: np.ndarray, w: np.ndarray, flip: np.ndarray, cfg: LocalGlobalSampling) -> Arrays:
    """Global box in the frame; local boxes inside it, also normalised to the (flipped) global crop."""
    g = d["gbox"]
    gx, gy, gw, gh = random_boxes(g[:, 0], g[:, 1], g[:, 2], g[:, 3], g[:, 4], *cfg.global_area, cfg.ratio, w, h)
    b, m = len(w), cfg.num_local
    lb = d["lbox"].reshape(b * m, 5, -1)
    rep = np.repeat
    lx, ly, lw, lh = random_boxes(lb[:, 0], lb[:, 1], lb[:, 2], lb[:, 3], lb[:, 4], *cfg.local_area, cfg.ratio,
                                  rep(gw, m), rep(gh, m))
    lx, ly, lw, lh = (v.reshape(b, m) for v in (lx, ly, lw, lh))
    norm = np.stack([lx / gw[:, None], ly / gh[:, None], (lx + lw) / gw[:, None], (ly + lh) / gh[:, None]], -1)
    mirrored = np.stack([1 - norm[..., 2], norm[..., 1], 1 - norm[..., 0], norm[..., 3]], -1)
    norm = np.where(flip[:, None, None], mirrored, norm)
    px = _xyxy(lx + gx[:, None], ly + gy[:, None], lw, lh)
    return {"global_box": _xyxy(gx, gy, gw, gh), "local_box_px": px, "local_boxes": norm.astype(np.float32)}


def localglobal_clips(d: Arrays, num_frames, height, width, fps, cfg: LocalGlobalSampling) -> Arrays:
    """``global_frames [B, Fg]``, ``local_frames [B, M, Fl]``, ``global_box [B, 4]``,
    ``local_box_px [B, M, 4]`` (stored-frame pixels), ``flip [B]``, and the model's geometry:
    ``local_boxes [B, M, 4]`` normalised to the delivered global crop (after its flip),
    ``local_times [B, M, 2]`` normalised to the global clip, ``order [B]`` (permutation class of
    ``perm [B, M]``, the segment of each local clip).
    """
    t, h, w, f = _batch_inputs(num_frames, height, width, fps)
    out = localglobal_times(d, t, f, cfg)
    out["flip"] = d["flip"] < cfg.flip_p
    out.update(localglobal_boxes(d, h, w, out["flip"], cfg))
    return out


def sample_localglobal(num_frames, height, width, fps, rng: np.random.Generator,
                       cfg: LocalGlobalSampling = LocalGlobalSampling()) -> Arrays:
    """``localglobal_clips`` on fresh draws."""
    return localglobal_clips(localglobal_draws(rng, np.size(num_frames), cfg), num_frames, height, width, fps, cfg)
