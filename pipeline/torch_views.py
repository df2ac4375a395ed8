"""The same T-CoRe views with PIL + torchvision v2 (for the reference loaders).

Input: three PIL RGB images (past, current, future). Output: the dict of CHW float tensors
that one sample of ``pipeline.loader`` holds: ``current_global`` [G,3,H,W], ``current_local``
[L,3,h,w], ``past`` / ``future`` [2,3,H,W] (``simple``: one random-resized crop per frame).
Interpolation as in ``pipeline.augment``: ``global_interp`` for the global crops,
``context_interp`` for the centred crops, ``local_interp`` for the local crops, bilinear for the
``simple`` workload. Colour jitter is torchvision's own (random order, contrast about the mean
grey, HSV hue) whatever ``jitter_order`` and ``contrast_pivot`` say.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from pipeline.config import PipelineConfig

BICUBIC, BILINEAR = v2.InterpolationMode.BICUBIC, v2.InterpolationMode.BILINEAR
INTERP = {"cubic": BICUBIC, "linear": BILINEAR}
PIL_INTERP = {"cubic": Image.Resampling.BICUBIC, "linear": Image.Resampling.BILINEAR}


class PilBlur:
    """Gaussian blur with PIL (as the DINO family does), radius uniform in ``sigma``, with probability p."""

    def __init__(self, p: float, sigma: tuple[float, float]):
        self.p, self.sigma = p, sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return img
        radius = self.sigma[0] + float(torch.rand(())) * (self.sigma[1] - self.sigma[0])
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


def _blur(cfg: PipelineConfig, p: float):
    """torchvision's GaussianBlur(blur_kernel) as the reference code, or PIL's (radius sigma) for 0."""
    if cfg.blur_kernel:
        return v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=p)
    return PilBlur(p, cfg.blur_sigma)


def _colour(cfg: PipelineConfig, blur_p: float, solarize_p: float) -> list:
    return [
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(p=cfg.grayscale_p),
        _blur(cfg, blur_p),
        v2.RandomSolarize(threshold=128, p=solarize_p),
    ]


def _tail(cfg: PipelineConfig) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]


class TorchViews:
    """Callable: (past, current, future) PIL images → the sample's view tensors."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        g, l_ = [cfg.global_size] * 2, [cfg.local_size] * 2
        rrc_g = v2.RandomResizedCrop(g, scale=cfg.global_scale, ratio=cfg.ratio, interpolation=INTERP[cfg.global_interp],
                                     antialias=True)
        rrc_l = v2.RandomResizedCrop(l_, scale=cfg.local_scale, ratio=cfg.ratio, interpolation=INTERP[cfg.local_interp],
                                     antialias=True)
        # simple: one bilinear (antialiased) crop per frame, the work FFCV's decoder does
        rrc_s = v2.RandomResizedCrop(g, scale=cfg.global_scale, ratio=cfg.ratio, interpolation=BILINEAR, antialias=True)
        solar = cfg.solarize_p
        self.global_t = [v2.Compose([rrc_g, *_colour(cfg, cfg.blur_p[min(i, 1)], solar if i == 1 else 0.0), *_tail(cfg)])
                         for i in range(cfg.num_global)]
        self.local_t = v2.Compose([rrc_l, v2.RandomHorizontalFlip(0.5), *_colour(cfg, cfg.blur_p[2], 0.0), *_tail(cfg)])
        self.context_t = [v2.Compose([*_colour(cfg, cfg.blur_p[0], 0.0), *_tail(cfg)]),
                          v2.Compose([*_colour(cfg, cfg.blur_p[1], solar), *_tail(cfg)])]
        self.simple_t = v2.Compose([rrc_s, *_tail(cfg)])

    def centred(self, img: Image.Image) -> Image.Image:
        """The largest centred crop with aspect within ``ratio``, resized to global_size²."""
        w, h = img.size
        lo, hi = self.cfg.ratio
        cw, ch = min(w, h * hi), min(h, w / lo)
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        return img.resize((self.cfg.global_size,) * 2, PIL_INTERP[self.cfg.context_interp], box=box)

    def __call__(self, past: Image.Image, cur: Image.Image, fut: Image.Image) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.workload == "simple":
            empty = torch.empty(0, 3, cfg.local_size, cfg.local_size)
            return {"current_global": self.simple_t(cur)[None], "current_local": empty,
                    "past": self.simple_t(past)[None], "future": self.simple_t(fut)[None]}
        local = [self.local_t(cur) for _ in range(cfg.num_local)]
        out = {
            "current_global": torch.stack([t(cur) for t in self.global_t]),
            "current_local": torch.stack(local) if local else torch.empty(0, 3, cfg.local_size, cfg.local_size),
        }
        for name, img in (("past", past), ("future", fut)):
            base = self.centred(img)
            out[name] = torch.stack([t(base) for t in self.context_t])
        return out
