"""Every per-view random parameter of a batch, drawn with numpy in a few array operations.

The DALI graph's device side only applies parameters; all randomness is drawn here, a batch or
a few batches at a time, from generators seeded by (seed, rank, epoch, batch or chunk index,
purpose), so a batch is the same whatever pipeline made it (a pipeline kept across epochs, a
resumed one) and the graph's host side is a handful of nodes instead of hundreds of scalar
operators. Arrays are [B, ...] (B = samples drawn together).

Views (``view_groups``): the current frame's global crops ``global0..``, its local crops
``local0..``, and two views of each centred context crop ``past0, past1, future0, future1``.
Views that share size, blur and solarize probabilities form a group, photometrically processed
as one sequence with per-view ("per-frame") parameters.

Geometry (``crop_rois``), relative to the frame (y0, x0, y1, x1), x0 > x1 for a flipped view:
- random resized crops follow torchvision's ``RandomResizedCrop.get_params`` exactly: up to 10
  attempts of area·U(scale) and exp(U(log ratio)), rounded to pixels, the first that fits, at a
  uniform integer position; else the centred crop with the aspect clamped to ``ratio``;
- the context crop is the largest centred window with aspect (w/h) within ``ratio``.

Colour (``colour_maps``): torchvision's ``ColorJitter`` (applied with p ``jitter_p``) then
``RandomGrayscale``, as one affine map per view x -> M·x + offset. Brightness, contrast, saturation
and hue are composed in a random order per view (``jitter_order: random``, as torchvision) or
in that fixed order (``fixed``). Brightness and saturation are torchvision's blends (saturation
blends with the luma grey, which is exact); hue turns the YIQ chroma plane (torchvision shifts
HSV hue, which is not linear: see ``tools/jitter_compare.py`` for the measured difference).
Contrast blends with a grey pivot: the view's mean grey at that step (``contrast_pivot: mean``,
torchvision; offset = (W·mean RGB of the view)·1, applied on the device) or 128 (``mid``;
offset T). Unlike torchvision, values are clamped once at the end, not after every step.

Blur (``blur_taps``): per view with its group's probability, sigma ~ U(blur_sigma), separable
taps exp(-k²/2σ²) normalised, over a fixed ``blur_kernel`` window (9: torchvision's
``GaussianBlur(9)`` as the reference code) or |k| <= ceil(3σ) (``blur_kernel: 0``); a view
that draws no blur gets the identity kernel. Solarize: a shift of 256 that a lookup table maps
to the solarized value (``pipeline.augment.solarize``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.sampling import uniform_int

LUMA = np.array([0.299, 0.587, 0.114])  # PIL's "L" conversion, also YIQ's Y
ATTEMPTS = 10  # torchvision's RandomResizedCrop
PHOTOMETRIC, CROPS, FRAMES = 0, 1, 2  # the purpose word of each generator's seed
LAYOUTS = {1: "F", 2: "FC", 3: "FXY"}  # per-frame argument layouts, by dims per sample ([n, 3]: a colour)


def _yiq_basis() -> tuple[np.ndarray, np.ndarray]:
    """RGB matrices A1, A2: the YIQ chroma projection and the chroma turned by 90°.

    Hue by θ is I - A1 + cosθ·A1 + sinθ·A2 (the luma stays, the chroma plane turns).
    """
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    inv = np.linalg.inv(yiq)
    e = np.eye(3)
    a1 = inv @ (np.outer(e[1], e[1]) + np.outer(e[2], e[2])) @ yiq
    a2 = inv @ (np.outer(e[2], e[1]) - np.outer(e[1], e[2])) @ yiq
    return a1, a2


YIQ_A1, YIQ_A2 = _yiq_basis()


@dataclass(frozen=True)
class BatchClock:
    """Maps a pipeline's batch counter to (epoch, batch index); counter 0 is (start_epoch, start_batch)."""

    start_epoch: int
    start_batch: int
    batches_per_epoch: int

    def at(self, iteration: int) -> tuple[int, int]:
        epoch, batch = divmod(self.start_batch + iteration, self.batches_per_epoch)
        return self.start_epoch + epoch, batch


def batch_rng(seed_words: tuple[int, ...], epoch: int, batch: int, purpose: int) -> np.random.Generator:
    """The generator of one purpose (PHOTOMETRIC, CROPS, FRAMES) for a batch (or chunk) of an epoch."""
    return np.random.default_rng((*seed_words, epoch, batch, purpose))


@dataclass(frozen=True)
class ViewGroup:
    """Views processed as one sequence: same size, blur and solarize probabilities."""

    size: int
    blur_p: float
    solarize_p: float
    views: tuple[str, ...]


def view_groups(cfg: PipelineConfig) -> list[ViewGroup]:
    """The tcore workload's photometric groups, in a fixed order (global-size ones, then locals)."""
    g = cfg.num_global
    keyed: dict[tuple[float, float], list[str]] = {}
    views = [f"global{i}" for i in range(g)] + ["past0", "past1", "future0", "future1"]
    blur = [cfg.blur_p[0]] + [cfg.blur_p[1]] * (g - 1) + [cfg.blur_p[0], cfg.blur_p[1]] * 2
    solar = [cfg.solarize_p if i == 1 else 0.0 for i in range(g)] + [0.0, cfg.solarize_p] * 2
    for v, b, s in zip(views, blur, solar):
        keyed.setdefault((b, s), []).append(v)
    groups = [ViewGroup(cfg.global_size, b, s, tuple(vs)) for (b, s), vs in keyed.items()]
    if cfg.num_local:
        groups.append(ViewGroup(cfg.local_size, cfg.blur_p[2], 0.0, tuple(f"local{i}" for i in range(cfg.num_local))))
    return groups


def crop_views(cfg: PipelineConfig) -> list[str]:
    """Views with their own crop window: global*, local*, context (tcore); past, current, future (simple)."""
    if cfg.workload == "simple":
        return ["past", "current", "future"]
    return [f"global{i}" for i in range(cfg.num_global)] + [f"local{i}" for i in range(cfg.num_local)] + ["context"]


def random_windows(rng: np.random.Generator, h: np.ndarray, w: np.ndarray, scales: np.ndarray,
                   ratio: tuple[float, float]) -> np.ndarray:
    """[B, n, 4] pixel windows (y0, x0, y1, x1) of torchvision's RandomResizedCrop for frames h × w [B];
    view i's area fraction is uniform in ``scales[i]`` ([n, 2])."""
    b, n = len(h), len(scales)
    hh, ww = h[:, None, None].astype(np.float64), w[:, None, None].astype(np.float64)
    u = rng.random((2, b, n, ATTEMPTS))
    lo, hi = scales[:, 0, None], scales[:, 1, None]
    target = hh * ww * (lo + (hi - lo) * u[0])
    aspect = np.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    cw, ch = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= ww) & (ch > 0) & (ch <= hh)
    first = np.argmax(fits, axis=2)
    i, j = np.indices((b, n), sparse=True)
    cw, ch = cw[i, j, first], ch[i, j, first]
    found = fits[i, j, first]
    hh, ww = hh[..., 0], ww[..., 0]
    in_ratio = ww / hh  # the fallback: the whole frame, its aspect clamped to ratio, centred
    cw = np.where(found, cw, np.where(in_ratio > ratio[1], np.round(hh * ratio[1]), ww))
    ch = np.where(found, ch, np.where(in_ratio < ratio[0], np.round(ww / ratio[0]), hh))
    u = rng.random((2, b, n))
    y0 = np.where(found, uniform_int(u[0], 0, (hh - ch).astype(np.int64)), (hh - ch) // 2)
    x0 = np.where(found, uniform_int(u[1], 0, (ww - cw).astype(np.int64)), (ww - cw) // 2)
    return np.stack([y0, x0, y0 + ch, x0 + cw], axis=-1)


def centred_window(h: np.ndarray, w: np.ndarray, ratio: tuple[float, float]) -> np.ndarray:
    """[B, 4] the largest centred window (y0, x0, y1, x1) with aspect w/h within ``ratio``."""
    h, w = h.astype(np.float64), w.astype(np.float64)
    cw, ch = np.minimum(w, h * ratio[1]), np.minimum(h, w / ratio[0])
    y0, x0 = (h - ch) / 2, (w - cw) / 2
    return np.stack([y0, x0, y0 + ch, x0 + cw], axis=-1)


def crop_rois(rng: np.random.Generator, h: np.ndarray, w: np.ndarray, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """{view: [B, 4] float32 relative (y0, x0, y1, x1)} for ``crop_views(cfg)``; frames h × w [B].

    Local views are flipped horizontally with probability 0.5 (x0 > x1).
    """
    views = crop_views(cfg)
    random = [v for v in views if v != "context"]
    scales = np.array([cfg.local_scale if v.startswith("local") else cfg.global_scale for v in random])
    scale = np.stack([h, w, h, w], axis=-1).astype(np.float64)[:, None]
    win = random_windows(rng, h, w, scales, cfg.ratio) / scale
    flip = (rng.random(win.shape[:2]) < 0.5) & np.array([v.startswith("local") for v in random])
    win[..., [1, 3]] = np.where(flip[..., None], win[..., [3, 1]], win[..., [1, 3]])
    out = {v: win[:, k].astype(np.float32) for k, v in enumerate(random)}
    if "context" in views:
        out["context"] = (centred_window(h, w, cfg.ratio) / scale[:, 0]).astype(np.float32)
    return out


def _factor(rng: np.random.Generator, shape: tuple[int, ...], spread: float, centre: float = 1.0) -> np.ndarray:
    """torchvision's jitter factors: uniform in [max(0, centre - spread), centre + spread]."""
    lo = max(0.0, centre - spread) if centre else -spread
    return rng.uniform(lo, centre + spread, shape)


def colour_draws(rng: np.random.Generator, b: int, n: int, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Per view [b, n]: jitter factors (brightness, contrast, saturation; 1 when jitter is off), hue
    angle θ (radians), grayscale coin, and ``order`` [b, n, 4] (0 b, 1 c, 2 s, 3 h: the order applied)."""
    shape = (b, n)
    on = rng.random(shape) < cfg.jitter_p
    out = {k: np.where(on, _factor(rng, shape, s), 1.0)
           for k, s in (("brightness", cfg.brightness), ("contrast", cfg.contrast), ("saturation", cfg.saturation))}
    out["theta"] = np.where(on, 2 * math.pi * _factor(rng, shape, cfg.hue, 0.0), 0.0)
    out["gray"] = rng.random(shape) < cfg.grayscale_p
    if cfg.jitter_order == "random":
        out["order"] = np.argsort(rng.random((*shape, 4)), axis=-1)
    else:
        out["order"] = np.tile(np.arange(4), (*shape, 1))
    return out


def colour_maps(d: dict[str, np.ndarray], pivot: str) -> tuple[np.ndarray, np.ndarray]:
    """Per view: M [b, n, 3, 3] and the offset vector [b, n, 3] composed from ``colour_draws``.

    ``pivot == "mid"``: the offset is T (add it to every pixel); ``"mean"``: it is W (add
    W·(the view's mean RGB) to every channel).
    """
    order = d["order"]
    shape = order.shape[:-1]
    eye = np.eye(3)
    grey = np.outer(np.ones(3), LUMA)
    steps = np.empty((*shape, 4, 3, 3))
    steps[..., 0, :, :] = d["brightness"][..., None, None] * eye
    steps[..., 1, :, :] = d["contrast"][..., None, None] * eye  # + (1 - c)·pivot, added below
    s = d["saturation"][..., None, None]
    steps[..., 2, :, :] = s * eye + (1 - s) * grey
    theta = d["theta"][..., None, None]
    steps[..., 3, :, :] = (eye - YIQ_A1) + np.cos(theta) * YIQ_A1 + np.sin(theta) * YIQ_A2
    b, n = np.indices(shape, sparse=True)
    steps = steps[b[..., None], n[..., None], order]  # in the order applied
    at = np.argmax(order == 1, axis=-1)  # contrast's place: its pivot is the grey of the map before it
    m = np.broadcast_to(eye, (*shape, 3, 3))
    w = np.broadcast_to(LUMA, (*shape, 3))
    for j in range(4):
        if j:
            w = np.where((at == j)[..., None], LUMA @ m, w)
        m = steps[..., j, :, :] @ m
    # grey stays grey under saturation and hue, so the pivot term only scales with a later brightness
    later_b = np.argmax(order == 0, axis=-1) > at
    k = (1 - d["contrast"]) * np.where(later_b, d["brightness"], 1.0)
    m = np.where(d["gray"][..., None, None], grey @ m, m)
    offset = np.repeat((128.0 * k)[..., None], 3, axis=-1) if pivot == "mid" else k[..., None] * w
    return m.astype(np.float32), offset.astype(np.float32)


def blur_taps(coin: np.ndarray, sigma: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """[b, n, w] separable Gaussian taps for blur coins and sigmas [b, n] (identity where the coin
    says no); w is the widest window of the views; see the module docstring."""
    if cfg.blur_kernel:
        radius = np.full(coin.shape, (cfg.blur_kernel - 1) // 2)
    else:
        radius = np.ceil(3 * sigma).astype(np.int64)
    radius = np.where(coin, radius, 0)
    r = max(int(radius.max()), 1)
    k = np.arange(-r, r + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (k / sigma[..., None]) ** 2) * (np.abs(k) <= radius[..., None])
    return (taps / taps.sum(-1, keepdims=True)).astype(np.float32)


def photometric_params(rng: np.random.Generator, b: int, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Per group i of ``view_groups(cfg)``: colour/i, offset/i, blur/i, solarize/i (only the steps
    that can change a view), each [b, n, ...] with n the group's views. Drawn for all views at
    once, then cut per group."""
    out: dict[str, np.ndarray] = {}
    groups = view_groups(cfg)
    if cfg.workload == "simple" or not groups:
        return out
    sizes = [len(g.views) for g in groups]
    ends = np.cumsum(sizes)
    parts = [slice(e - k, e) for e, k in zip(ends, sizes)]
    if cfg.jitter_p > 0 or cfg.grayscale_p > 0:
        m, offset = colour_maps(colour_draws(rng, b, int(ends[-1]), cfg), cfg.contrast_pivot)
        for i, part in enumerate(parts):
            out[f"colour/{i}"], out[f"offset/{i}"] = m[:, part], offset[:, part]
    u = rng.random((3, b, int(ends[-1])))
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[1]
    for i, (grp, part) in enumerate(zip(groups, parts)):
        if grp.blur_p > 0:
            out[f"blur/{i}"] = blur_taps(u[0][:, part] < grp.blur_p, sigma[:, part], cfg)
        if grp.solarize_p > 0:
            out[f"solarize/{i}"] = (u[2][:, part] < grp.solarize_p).astype(np.float32) * (256.0 / 32767.0)
    return out


def roi_names(cfg: PipelineConfig) -> list[str]:
    """The crop-window parameter names, a start and an end per ``crop_views(cfg)`` view."""
    return [f"roi_{end}/{v}" for v in crop_views(cfg) for end in ("start", "end")]


def split_rois(rois: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{view: [B, 4]} → {roi_start/view: [B, 2] (y0, x0), roi_end/view: [B, 2] (y1, x1)}, as ``fn.resize`` takes them."""
    out = {}
    for v, r in rois.items():
        out[f"roi_start/{v}"], out[f"roi_end/{v}"] = r[:, :2], r[:, 2:]
    return out


def per_frame(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Blur taps as the [n, 1, w] row and [n, w, 1] column filters of ``fn.filter``."""
    out = {}
    for k, v in params.items():
        if k.startswith("blur/"):
            out[k.replace("blur/", "blur_rows/")], out[k.replace("blur/", "blur_cols/")] = v[:, :, None], v[..., None]
        else:
            out[k] = v
    return out


def batch_params(cfg: PipelineConfig, seed_words: tuple[int, ...], epoch: int, batch: int, b: int,
                 sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All parameter arrays of ``b`` samples, as the graph consumes them, drawn from generators
    seeded by (``seed_words``, epoch, batch): the photometric ones, and the crop windows when the
    frame sizes ``sizes`` [b, 2] (h, w) are known."""
    out = per_frame(photometric_params(batch_rng(seed_words, epoch, batch, PHOTOMETRIC), b, cfg))
    if sizes is not None:
        out.update(split_rois(crop_rois(batch_rng(seed_words, epoch, batch, CROPS), sizes[:, 0], sizes[:, 1], cfg)))
    return out


def layout(name: str, array: np.ndarray) -> str:
    """The DALI layout of a parameter output: per-frame ("F...") for a group's per-view arrays."""
    if name.startswith("roi") or "/" not in name:
        return ""
    return LAYOUTS[array.ndim - 1]
