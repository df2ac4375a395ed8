"""T-CoRe views as DALI graph pieces (used inside the ``@pipeline_def`` of ``pipeline.graph``).

Images are HWC uint8 until ``normalize``, which writes CHW float. Every random choice is its
own DALI random operator, so every view of every sample draws independently. Colour jitter is
one ``color_twist`` (brightness, contrast, saturation, hue applied in a fixed order; grayscale is
saturation 0); blur and solarize run only on the samples whose coin says so (DALI conditionals).
"""

from __future__ import annotations

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from pipeline.config import PipelineConfig

CUBIC = types.INTERP_CUBIC


def _coin(p: float):
    return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)


def colour(img, cfg: PipelineConfig, blur_p: float, solarize_p: float):
    """Jitter (p ``jitter_p``), grayscale, Gaussian blur (p ``blur_p``), solarize (p ``solarize_p``)."""
    on = _coin(cfg.jitter_p)
    gray = _coin(cfg.grayscale_p)
    brightness = 1.0 + on * fn.random.uniform(range=[-cfg.brightness, cfg.brightness])
    contrast = 1.0 + on * fn.random.uniform(range=[-cfg.contrast, cfg.contrast])
    saturation = (1.0 + on * fn.random.uniform(range=[-cfg.saturation, cfg.saturation])) * (1.0 - gray)
    hue = on * fn.random.uniform(range=[-360.0 * cfg.hue, 360.0 * cfg.hue])
    img = fn.color_twist(img, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    if blur_p > 0:
        img = _maybe_blur(img, cfg, blur_p)
    if solarize_p > 0:
        img = _maybe_solarize(img, solarize_p)
    return img


def _maybe_blur(img, cfg: PipelineConfig, p: float):
    if p >= 1.0:
        return fn.gaussian_blur(img, sigma=fn.random.uniform(range=list(cfg.blur_sigma)))
    if fn.random.coin_flip(probability=p, dtype=types.BOOL):
        out = fn.gaussian_blur(img, sigma=fn.random.uniform(range=list(cfg.blur_sigma)))
    else:
        out = img
    return out


def _maybe_solarize(img, p: float):
    if fn.random.coin_flip(probability=p, dtype=types.BOOL):
        x = fn.cast(img, dtype=types.INT16)
        high = fn.cast(x >= 128, dtype=types.INT16)
        out = fn.cast(x + high * (255 - 2 * x), dtype=types.UINT8)
    else:
        out = img
    return out


def normalize(img, cfg: PipelineConfig, out_dtype, mirror=None):
    """ImageNet mean/std, CHW, optional per-sample horizontal flip."""
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    kwargs = {} if mirror is None else {"mirror": mirror}
    return fn.crop_mirror_normalize(img, mean=mean, std=std, output_layout="CHW", dtype=out_dtype, **kwargs)


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
    return fn.resize(img, size=size, roi_start=start, roi_end=end, interp_type=CUBIC, antialias=True)


def current_views(img, cfg: PipelineConfig, out_dtype):
    """The current frame's global and local crops, each stacked: [G,3,H,W], [L,3,h,w]."""
    globals_ = []
    for i in range(cfg.num_global):
        v = fn.random_resized_crop(img, size=[cfg.global_size] * 2, random_area=list(cfg.global_scale),
                                   random_aspect_ratio=list(cfg.ratio), interp_type=CUBIC)
        v = colour(v, cfg, cfg.blur_p[0] if i == 0 else cfg.blur_p[1], cfg.solarize_p if i == 1 else 0.0)
        globals_.append(normalize(v, cfg, out_dtype))
    locals_ = []
    for _ in range(cfg.num_local):
        v = fn.random_resized_crop(img, size=[cfg.local_size] * 2, random_area=list(cfg.local_scale),
                                   random_aspect_ratio=list(cfg.ratio), interp_type=CUBIC)
        v = colour(v, cfg, cfg.blur_p[2], 0.0)
        locals_.append(normalize(v, cfg, out_dtype, mirror=fn.random.coin_flip(probability=0.5)))
    return fn.stack(*globals_), (fn.stack(*locals_) if locals_ else None)


def context_views(img, shape, cfg: PipelineConfig, out_dtype):
    """A past or future frame: the centred crop, twice, with independent colour: [2,3,H,W]."""
    base = centred_resize(img, shape, cfg)
    v1 = normalize(colour(base, cfg, cfg.blur_p[0], 0.0), cfg, out_dtype)
    v2 = normalize(colour(base, cfg, cfg.blur_p[1], cfg.solarize_p), cfg, out_dtype)
    return fn.stack(v1, v2)


def simple_view(jpeg, decoder_device: str, cfg: PipelineConfig, out_dtype, **decoder_kwargs):
    """The `simple` workload: decode a random-resized-crop window and resize it: [1,3,H,W]."""
    v = fn.decoders.image_random_crop(jpeg, device=decoder_device, output_type=types.RGB,
                                      random_area=list(cfg.global_scale),
                                      random_aspect_ratio=list(cfg.ratio), **decoder_kwargs)
    v = fn.resize(v, size=[cfg.global_size] * 2, interp_type=CUBIC, antialias=True)
    return fn.stack(normalize(v, cfg, out_dtype))
