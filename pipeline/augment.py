"""T-CoRe views as DALI graph pieces (used inside the ``@pipeline_def`` of ``pipeline.graph``).

Crops are made per view (HWC uint8). Then views that share their blur and solarize
probabilities, whatever output they belong to (global view 1 with the first past and future
views; global view 2 with the second ones; the local crops), are stacked as one uint8
sequence [V,H,W,3], and every photometric step runs once per sequence with per-view (DALI
"per-frame") random parameters; each output's frames are then gathered (uint8) and one
``crop_mirror_normalize`` writes its float [V,3,H,W] tensor. Every view still draws every
parameter independently. Why: each DALI operator costs ~0.1 ms of CPU per batch however small,
and CPU operators run one at a time, so a graph with few operators per group instead of a few
per view keeps both cores busy; blur and solarize run only on the views they can change; no
float tensor is copied for stacking.

Photometric steps, per view, in this order (the recipe's probabilities and ranges):
- colour jitter with p ``jitter_p``: brightness, contrast, saturation, hue in that fixed order,
  composed into one per-view affine colour map (hue is a rotation of the YIQ chroma plane) and
  applied by one ``coord_transform``, rounded and clamped to [0, 255]; grayscale with p
  ``grayscale_p`` is saturation 0 in the same map;
- Gaussian blur with probability p, sigma uniform in ``blur_sigma``: a separable ``fn.filter``
  with per-view taps exp(-k²/2σ²) for |k| <= ceil(3σ) (``fn.gaussian_blur``'s window), zero
  beyond, normalised; a view whose coin says no gets the identity kernel. Same pixels as
  ``fn.gaussian_blur`` (±1 from rounding) at a fraction of its CPU cost, and no conditional
  split/merge of the batch;
- solarize with probability p: one 512-entry ``lookup_table`` on value + 256·coin (identity
  table for the first 256 entries, 255 − v for v >= 128 in the second).

Geometry: the current frame's global crops are bicubic (antialiased when downscaling, as PIL
and torchvision do), as the recipe asks (``cfg.global_interp``). The past/future centred crop,
for which the recipe names no interpolation, uses ``cfg.context_interp`` (default ``linear``:
bicubic costs DALI's CPU resampler ~0.5 ms more per 224² view, ~1.8 ms per triplet in the whole
graph). Local 96² crops use ``cfg.local_interp`` (default ``linear``: the recipe names bicubic
only for the global crops; linear costs ~25 % less on the CPU and differs from bicubic by a
slight softness at 96 px);
their flip is ``fn.flip`` on the uint8 crop. The ``simple`` workload decodes only a random
crop window and resizes it linearly (antialiased when downscaling), as FFCV's decoder does with
OpenCV's INTER_AREA, so that the FFCV comparison is on equal work.
"""

from __future__ import annotations

import math

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from pipeline.config import PipelineConfig

CUBIC, LINEAR = types.INTERP_CUBIC, types.INTERP_LINEAR
INTERP = {"cubic": CUBIC, "linear": LINEAR}
# solarize: entries 0..255 are the identity, 256..511 the solarized value of (entry - 256)
SOLARIZE_LUT = list(range(256)) + [v if v < 128 else 255 - v for v in range(256)]


def _const(values) -> object:
    return types.Constant(np.asarray(values, dtype=np.float32))


def _draw(n: int, lo: float, hi: float):
    """``n`` uniform draws in [lo, hi) per sample, [n] FLOAT (constant when the range is empty)."""
    return fn.random.uniform(range=[lo, hi], shape=[n]) if hi > lo else _const([lo] * n)


def _coins(probs: list[float]):
    """One coin per view with its own probability: [n] FLOAT of 0/1."""
    if len(set(probs)) == 1:  # one operator fewer (each costs ~0.1 ms of CPU per batch)
        return fn.cast(fn.random.coin_flip(probability=probs[0], shape=[len(probs)]), dtype=types.FLOAT)
    return fn.cast(fn.random.uniform(range=[0.0, 1.0], shape=[len(probs)]) < _const(probs), dtype=types.FLOAT)


def _yiq_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB matrices A0, A1, A2 with H(θ)·S(s) = A0 + s·cosθ·A1 + s·sinθ·A2.

    In YIQ coordinates saturation s scales the chroma (I, Q) and hue θ rotates it: A0 keeps the
    luma, A1 the chroma, A2 is the chroma turned by 90°.
    """
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    inv = np.linalg.inv(yiq)
    e = np.eye(3)
    a0 = inv @ np.outer(e[0], e[0]) @ yiq
    a1 = inv @ (np.outer(e[1], e[1]) + np.outer(e[2], e[2])) @ yiq
    a2 = inv @ (np.outer(e[2], e[1]) - np.outer(e[1], e[2])) @ yiq
    return tuple(a.astype(np.float32) for a in (a0, a1, a2))


YIQ_A0, YIQ_A1, YIQ_A2 = _yiq_basis()


def jitter(seq, cfg: PipelineConfig, n: int):
    """Colour jitter (p ``jitter_p``) and grayscale (p ``grayscale_p``): one per-view affine colour map.

    Brightness b, then contrast c about mid-grey 128, then saturation s and hue θ in YIQ, make
    x -> c·b·H(θ)·S(s)·x + 128·(1 - c) (S and H keep grey grey); grayscale is s = 0. Applied by
    ``coord_transform`` with a per-view 3×3 matrix, rounded and clamped to uint8 (cheaper on the
    CPU than ``color_twist`` for the same map).
    """
    on = _coins([cfg.jitter_p] * n)
    gray = _coins([cfg.grayscale_p] * n)
    brightness = 1.0 + on * _draw(n, -cfg.brightness, cfg.brightness)
    contrast = 1.0 + on * _draw(n, -cfg.contrast, cfg.contrast)
    saturation = (1.0 + on * _draw(n, -cfg.saturation, cfg.saturation)) * (1.0 - gray)
    hue = on * _draw(n, -2.0 * math.pi * cfg.hue, 2.0 * math.pi * cfg.hue)  # radians
    scale = fn.reshape(brightness * contrast, shape=[n, 1, 1])
    chroma_cos = fn.reshape(saturation * dmath.cos(hue), shape=[n, 1, 1])
    chroma_sin = fn.reshape(saturation * dmath.sin(hue), shape=[n, 1, 1])
    matrix = scale * (_const(YIQ_A0[None]) + chroma_cos * _const(YIQ_A1[None]) + chroma_sin * _const(YIQ_A2[None]))
    offset = fn.reshape(128.0 * (1.0 - contrast), shape=[n, 1]) * _const(np.ones((1, 3)))
    return fn.coord_transform(seq, M=fn.per_frame(matrix), T=fn.per_frame(offset), dtype=types.UINT8)


def gaussian_blur(seq, cfg: PipelineConfig, probs: list[float]):
    """Blur view i with probability ``probs[i]``, sigma uniform in ``cfg.blur_sigma``; see the module docstring.

    Every view of a sample uses the same kernel width (per-frame filters share a shape): the
    widest window among its views, zero-padded, so that a sample with light or no blur pays less.
    """
    n = len(probs)
    r_max = math.ceil(3.0 * cfg.blur_sigma[1])
    k = np.arange(-r_max, r_max + 1, dtype=np.float32)
    sigma = fn.reshape(_draw(n, *cfg.blur_sigma), shape=[n, 1])
    radius = dmath.ceil(3.0 * sigma) * fn.reshape(_coins(probs), shape=[n, 1])  # 0: identity kernel
    taps = dmath.exp(_const(k * k) * (-0.5 / (sigma * sigma))) * fn.cast(_const(np.abs(k)) <= radius,
                                                                          dtype=types.FLOAT)
    taps = taps / fn.reshape(fn.reductions.sum(taps, axes=[1]), shape=[n, 1])
    widest = fn.cast(fn.reductions.max(radius), dtype=types.INT32)
    taps = fn.slice(taps, fn.reshape(r_max - widest, shape=[1]), fn.reshape(2 * widest + 1, shape=[1]), axes=[1])
    seq = fn.filter(seq, fn.per_frame(fn.expand_dims(taps, axes=[1])))  # [n, 1, w]: along rows
    return fn.filter(seq, fn.per_frame(fn.expand_dims(taps, axes=[2])))  # [n, w, 1]: along columns


def solarize(seq, p: float, n: int):
    """Solarize each of the ``n`` views (v -> 255 - v for v >= 128) with probability ``p``.

    ``brightness_contrast`` adds 256 to the views whose coin says yes (its shift is in units of
    its int16 output's maximum; brightness and contrast stay 1), then one 512-entry table maps
    v to v and 256 + v to the solarized v.
    """
    shift = _coins([p] * n) * (256.0 / 32767.0)
    seq = fn.brightness_contrast(seq, brightness_shift=fn.per_frame(shift), dtype=types.INT16)
    return fn.lookup_table(seq, keys=list(range(512)), values=SOLARIZE_LUT, dtype=types.UINT8)


def _group(views: list, cfg: PipelineConfig, blur_p: float, solarize_p: float):
    """Views sharing probabilities → one uint8 sequence [n,H,W,3], jittered, blurred, solarized."""
    n = len(views)
    seq = fn.stack(*views, axis_name="F") if n > 1 else fn.expand_dims(views[0], axes=[0], new_axis_names="F")
    if cfg.jitter_p > 0 or cfg.grayscale_p > 0:
        seq = jitter(seq, cfg, n)
    if blur_p > 0:
        seq = gaussian_blur(seq, cfg, [blur_p] * n)
    if solarize_p > 0:
        seq = solarize(seq, solarize_p, n)
    return seq


def photometric(views: list, cfg: PipelineConfig, blur_p: list[float], solarize_p: list[float]) -> list:
    """HWC uint8 views of one size → the same views jittered, blurred (p ``blur_p[i]``), solarized.

    Views with the same blur and solarize probabilities, whatever output they belong to, form
    one uint8 sequence on which every step runs once with per-view (per-frame) random draws:
    the graph has a few operators per group instead of a few per view (each DALI operator costs
    ~0.1 ms of CPU per batch however small), and a step runs only on the views it can change.
    Returns (sequence, frame index) pairs, in the order of ``views``.
    """
    groups: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(zip(blur_p, solarize_p)):
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(views)
    for (blur, solar), idx in groups.items():
        seq = _group([views[i] for i in idx], cfg, blur, solar)
        for j, i in enumerate(idx):
            out[i] = (seq, j, len(idx))
    return out


def normalize(frames: list, cfg: PipelineConfig, out_dtype):
    """(sequence, frame) pairs from ``photometric`` → [V,3,H,W] with ImageNet mean/std, in one pass."""
    seq, _, size = frames[0]
    whole = size == len(frames) and all(f[0] is seq and f[1] == j for j, f in enumerate(frames))
    if not whole:  # gather the frames (uint8, cheap) into one sequence
        seq = fn.stack(*[s[j] for s, j, _ in frames], axis_name="F")
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    return fn.crop_mirror_normalize(seq, mean=mean, std=std, output_layout="FCHW", dtype=out_dtype)


def centred_resize(img, shape, cfg: PipelineConfig):
    """The largest centred crop with aspect (w/h) within ``cfg.ratio``, resized to global_size².

    ``shape`` is the encoded image's HWC shape (``fn.peek_image_shape``, CPU).
    """
    h = fn.cast(shape[0], dtype=types.FLOAT)
    w = fn.cast(shape[1], dtype=types.FLOAT)
    lo, hi = cfg.ratio
    crop_w = dmath.min(w, h * hi)
    crop_h = dmath.min(h, w / lo)
    y0, x0 = (h - crop_h) * 0.5, (w - crop_w) * 0.5
    start = fn.stack(y0, x0)
    end = fn.stack(y0 + crop_h, x0 + crop_w)
    size = [cfg.global_size, cfg.global_size]
    return fn.resize(img, size=size, roi_start=start, roi_end=end, interp_type=INTERP[cfg.context_interp],
                     antialias=True)


def tcore_views(imgs: list, shapes: list, cfg: PipelineConfig, out_dtype) -> tuple:
    """Decoded (past, current, future) frames → current_global [G,3,H,W], current_local [L,3,h,w]
    (None when L = 0), past [2,3,H,W], future [2,3,H,W].

    ``shapes`` are the encoded frames' HWC shapes (``fn.peek_image_shape``). Global view 1 and
    the first view of past and future: blur p ``blur_p[0]``; global view 2 and the second
    context views: blur p ``blur_p[1]`` and solarize; further global views: blur p ``blur_p[1]``;
    local views: blur p ``blur_p[2]``, flip p 0.5.
    """
    g, big = cfg.num_global, [cfg.global_size] * 2
    views = [fn.random_resized_crop(imgs[1], size=big, random_area=list(cfg.global_scale),
                                    random_aspect_ratio=list(cfg.ratio), interp_type=INTERP[cfg.global_interp],
                                    antialias=True)
             for _ in range(g)]
    blur = [cfg.blur_p[0]] + [cfg.blur_p[1]] * (g - 1)
    solar = [cfg.solarize_p if i == 1 else 0.0 for i in range(g)]
    for frame in (0, 2):
        base = centred_resize(imgs[frame], shapes[frame], cfg)
        views += [base, base]
        blur += [cfg.blur_p[0], cfg.blur_p[1]]
        solar += [0.0, cfg.solarize_p]
    frames = photometric(views, cfg, blur, solar)
    cur_global = normalize(frames[:g], cfg, out_dtype)
    past, fut = normalize(frames[g:g + 2], cfg, out_dtype), normalize(frames[g + 2:], cfg, out_dtype)
    if cfg.num_local == 0:
        return cur_global, None, past, fut
    local = []
    for _ in range(cfg.num_local):
        v = fn.random_resized_crop(imgs[1], size=[cfg.local_size] * 2, random_area=list(cfg.local_scale),
                                   random_aspect_ratio=list(cfg.ratio), interp_type=INTERP[cfg.local_interp],
                                   antialias=True)
        local.append(fn.flip(v, horizontal=fn.random.coin_flip(probability=0.5)))
    cur_local = normalize(photometric(local, cfg, [cfg.blur_p[2]] * cfg.num_local, [0.0] * cfg.num_local), cfg,
                          out_dtype)
    return cur_global, cur_local, past, fut


def simple_view(jpeg, decoder_device: str, cfg: PipelineConfig, out_dtype, **decoder_kwargs):
    """The `simple` workload: decode a random-resized-crop window and resize it: [1,3,H,W]."""
    v = fn.decoders.image_random_crop(jpeg, device=decoder_device, output_type=types.RGB,
                                      random_area=list(cfg.global_scale),
                                      random_aspect_ratio=list(cfg.ratio), **decoder_kwargs)
    v = fn.resize(v, size=[cfg.global_size] * 2, interp_type=LINEAR, antialias=True)
    return normalize([(fn.expand_dims(v, axes=[0], new_axis_names="F"), 0, 1)], cfg, out_dtype)
