"""DALI's colour jitter against torchvision's on the same images: per-channel statistics.

    python -m tools.jitter_compare --shards data/sample_shards [--images 48] [--draws 24] [--json PATH]

The DALI graph applies ``ColorJitter`` as one affine map per view (``pipeline.params``):
brightness, contrast about the view's mean grey and saturation as torchvision does them, in
torchvision's random order, but hue as a turn of the YIQ chroma plane (torchvision shifts the HSV
hue, which is not linear) and with one clamp at the end (torchvision clamps after every step).
This measures what that leaves: frames of the shards, each jittered ``--draws`` times by both
(probability 1, the recipe's strengths), compared by the distribution over views of the mean
R, G, B, luma and HSV saturation, of each view's mean change from its source, and (hue alone)
of the HSV hue shift. Hue shift in degrees; everything else in 0..255 levels.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image
from torchvision.transforms import v2

from pipeline.augment import jitter
from pipeline.bench import frame_bytes
from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.params import colour_draws, colour_maps

LUMA = np.array([0.299, 0.587, 0.114])


def dali_jitter(images: list[np.ndarray], cfg: PipelineConfig, draws: int, seed: int) -> np.ndarray:
    """[len(images), draws, H, W, 3] uint8: each image jittered ``draws`` times by the DALI graph."""
    m, offset = colour_maps(colour_draws(np.random.default_rng(seed), len(images), draws, cfg), cfg.contrast_pivot)

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None, seed=seed)
    def pipe():
        img = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
        mat = fn.external_source(source=lambda: m, batch=True, layout="FXY", dtype=types.FLOAT)
        off = fn.external_source(source=lambda: offset, batch=True, layout="FC", dtype=types.FLOAT)
        return jitter(fn.stack(*[img] * draws, axis_name="F"), mat, off, cfg.contrast_pivot)

    p = pipe()
    p.build()
    (out,) = p.run()
    return np.stack([np.asarray(out[i]) for i in range(len(images))])


def torchvision_jitter(images: list[np.ndarray], cfg: PipelineConfig, draws: int, seed: int) -> np.ndarray:
    """The same with torchvision's ``ColorJitter`` on PIL images (as the reference code runs it)."""
    torch.manual_seed(seed)
    cj = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    return np.stack([np.stack([np.asarray(cj(Image.fromarray(im))) for _ in range(draws)]) for im in images])


def _hsv(x: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 RGB → [..., 3] HSV with H in degrees, S and V in 0..255 (PIL's definitions)."""
    rgb = x.astype(np.float64)
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(c > 0, c, 1)
    h = np.where(mx == r, (g - b) / safe % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    s = np.where(mx > 0, 255 * c / np.where(mx > 0, mx, 1), 0)
    return np.stack([h, s, mx], axis=-1)


def view_stats(views: np.ndarray, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per view: mean R, G, B, luma, HSV saturation, mean |change|, and the saturation-weighted
    circular mean HSV hue shift (degrees) against the source image."""
    x = views.astype(np.float64)  # [I, D, H, W, 3]
    src = np.stack(images).astype(np.float64)[:, None]
    hsv, hsv0 = _hsv(views), _hsv(np.stack(images))[:, None]
    turn = np.deg2rad(hsv[..., 0] - hsv0[..., 0])
    weight = np.minimum(hsv[..., 1], hsv0[..., 1])
    shift = np.angle((weight * np.exp(1j * turn)).sum((-1, -2)))
    return {"mean_r": x[..., 0].mean((-1, -2)), "mean_g": x[..., 1].mean((-1, -2)), "mean_b": x[..., 2].mean((-1, -2)),
            "luma": (x @ LUMA).mean((-1, -2)), "saturation": hsv[..., 1].mean((-1, -2)),
            "change": np.abs(x - src).mean((-1, -2, -3)), "hue_shift": np.rad2deg(shift)}


def compare(images: list[np.ndarray], cfg: PipelineConfig, draws: int, seed: int = 0) -> dict[str, dict]:
    """{statistic: {"torchvision": (mean, std over views), "dali": (mean, std)}}."""
    out = {}
    a = view_stats(torchvision_jitter(images, cfg, draws, seed), images)
    b = view_stats(dali_jitter(images, cfg, draws, seed), images)
    for k in a:
        out[k] = {"torchvision": (float(a[k].mean()), float(a[k].std())), "dali": (float(b[k].mean()), float(b[k].std()))}
    return out


def shard_images(shards: str, count: int, size: int) -> list[np.ndarray]:
    """``count`` frames of the shards' train split, spread over its clips, resized to size²."""
    jpegs = frame_bytes(open_split(shards, "train", verify_offsets=False), count)
    return [np.asarray(Image.open(io.BytesIO(j)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            for j in jpegs]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(prog="python -m tools.jitter_compare", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--draws", type=int, default=24)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    images = shard_images(args.shards, args.images, args.size)
    settings = {"full jitter (b 0.4, c 0.4, s 0.2, h 0.1)": PipelineConfig(jitter_p=1.0),
                "hue alone (h 0.1)": PipelineConfig(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0)}
    report = {}
    for title, cfg in settings.items():
        found = report[title] = compare(images, cfg, args.draws)
        t = Table(title=f"{title}: {len(images)} frames × {args.draws} draws, mean ± std over views")
        for col in ("statistic", "torchvision", "DALI", "difference of means"):
            t.add_column(col, justify="left" if col == "statistic" else "right")
        for k, v in found.items():
            (ma, sa), (mb, sb) = v["torchvision"], v["dali"]
            t.add_row(k, f"{ma:.1f} ± {sa:.1f}", f"{mb:.1f} ± {sb:.1f}", f"{mb - ma:+.1f}")
        Console().print(t)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
