"""Where a DALI triplet's CPU time goes: per-operator costs and whole-graph ablations.

    python -m tools.dali_op_costs --shards data/sample_shards [--seconds 2] [--json PATH]

1. Operators alone: CPU milliseconds per 224×224 RGB image (process CPU time over images, a
   batch of 48, one DALI thread per core) for the operators the T-CoRe graph uses and their
   alternatives; decoding uses the shards' own JPEGs.
2. The tcore graph with one part switched off or cheapened through its config keys: CPU ms per
   triplet and triplets/s of the DALI loader, so each part's share is the difference to "full".
CPU time, unlike wall time, barely moves when the machine is shared, which makes both tables
steadier than throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from rich.console import Console
from rich.table import Table

from pipeline.bench import frame_bytes, measure
from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.loader import build_loader

BATCH, SIZE = 48, 224
MEAN, STD = [124.0, 116.0, 104.0], [58.0, 57.0, 57.0]
K13 = (lambda k: (k / k.sum()).astype(np.float32))(np.exp(-np.arange(-6, 7) ** 2 / 8.0))


def _cpu_ms(source: Callable, body: Callable, seconds: float, layout: str) -> float:
    """CPU ms per sample of ``body`` applied to batches from ``source``."""
    @pipeline_def(batch_size=BATCH, num_threads=os.cpu_count() or 1, device_id=None, seed=0)
    def pipe():
        return body(fn.external_source(source=source, batch=True, dtype=types.UINT8, layout=layout))

    p = pipe()
    p.build()
    for _ in range(3):
        p.run()
    done, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.run()
        done += BATCH
    cpu = time.process_time() - c0
    del p
    return 1000.0 * cpu / done


def _images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The test images, the same for every operator: BATCH random 224² RGB images, and BATCH crops
    of 150–256 × 150–300 pixels (what a random resized crop of a 256-short-side frame cuts out)."""
    rng = np.random.default_rng(0)
    square = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(BATCH)]
    crops = [rng.integers(0, 256, (int(rng.integers(150, 257)), int(rng.integers(150, 301)), 3), dtype=np.uint8)
             for _ in range(BATCH)]
    return square, crops


def _colour(x):
    m = fn.random.uniform(range=[0.0, 0.6], shape=[3, 3])
    return fn.coord_transform(x, M=m, T=fn.random.uniform(range=[-9, 9], shape=[3]), dtype=types.UINT8)


def operator_costs(jpegs: list[bytes], seconds: float) -> dict[str, float]:
    """CPU ms per image for each operator (see the module docstring)."""
    square, crops = _images()
    encoded = [np.frombuffer(j, dtype=np.uint8) for j in jpegs]

    def jpeg_batch(info=None):
        return [encoded[k % len(encoded)] for k in range(BATCH)]

    u = fn.random.uniform
    ops = {  # name: (input batch, graph, layout)
        "decode a shard JPEG (libjpeg-turbo)": (jpeg_batch, lambda x: fn.decoders.image(x, output_type=types.RGB), ""),
        "resize to 224², linear": (lambda: crops, lambda x: fn.resize(x, size=[SIZE] * 2, interp_type=types.INTERP_LINEAR), "HWC"),
        "resize to 224², cubic": (lambda: crops, lambda x: fn.resize(x, size=[SIZE] * 2, interp_type=types.INTERP_CUBIC), "HWC"),
        "resize to 224², nearest": (lambda: crops, lambda x: fn.resize(x, size=[SIZE] * 2, interp_type=types.INTERP_NN), "HWC"),
        "color_twist": (lambda: square, lambda x: fn.color_twist(x, brightness=u(range=[0.6, 1.4]), contrast=u(range=[0.6, 1.4]),
                                                                  saturation=u(range=[0.8, 1.2]), hue=u(range=[-36, 36])), "HWC"),
        "coord_transform 3×3 → uint8 (our jitter)": (lambda: square, _colour, "HWC"),
        "brightness_contrast": (lambda: square, lambda x: fn.brightness_contrast(x, brightness=u(range=[0.6, 1.4])), "HWC"),
        "filter 13 taps, rows + columns (blur)": (lambda: square, lambda x: fn.filter(fn.filter(x, K13[None]), K13[:, None]), "HWC"),
        "gaussian_blur sigma 2": (lambda: square, lambda x: fn.gaussian_blur(x, sigma=2.0), "HWC"),
        "lookup_table (solarize)": (lambda: square, lambda x: fn.lookup_table(x, keys=list(range(256)), values=list(range(255, -1, -1)),
                                                                            dtype=types.UINT8), "HWC"),
        "crop_mirror_normalize → float CHW": (lambda: square, lambda x: fn.crop_mirror_normalize(x, mean=MEAN, std=STD,
                                                                                                  output_layout="CHW"), "HWC"),
        "x · 1.5, then cast float → uint8": (lambda: square, lambda x: fn.cast(x * 1.5, dtype=types.UINT8), "HWC"),
    }
    return {name: _cpu_ms(src, body, seconds, layout) for name, (src, body, layout) in ops.items()}


def opencv_costs(seconds: float) -> dict[str, float]:
    """The same work with OpenCV, one thread (when ``cv2`` is installed, e.g. by the ffcv extra)."""
    try:
        import cv2
    except ImportError:
        return {}
    cv2.setNumThreads(1)
    square, crops = _images()
    matrix = np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]], np.float32)
    work = {"OpenCV resize to 224², linear": lambda im: cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR),
            "OpenCV resize to 224², cubic": lambda im: cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC),
            "OpenCV transform 3×3 → uint8": lambda im: cv2.transform(im, matrix)}
    out = {}
    for name, f in work.items():
        images = square if "transform" in name else crops
        done, c0 = 0, time.process_time()
        while time.process_time() - c0 < seconds:
            for im in images:
                f(im)
            done += len(images)
        out[name] = 1000.0 * (time.process_time() - c0) / done
    return out


ABLATIONS = {  # name: PipelineConfig overrides (the full graph is the reference code's recipe)
    "full tcore graph": {},
    "no colour jitter or grayscale": {"jitter_p": 0.0, "grayscale_p": 0.0},
    "contrast about 128 (contrast_pivot: mid)": {"contrast_pivot": "mid"},
    "linear global crops": {"global_interp": "linear"},
    "linear context crops": {"context_interp": "linear"},
    "linear local crops": {"local_interp": "linear"},
    "no local crops": {"num_local": 0},
    "no blur": {"blur_p": (0.0, 0.0, 0.0)},
    "blur window ceil(3 sigma) (blur_kernel: 0)": {"blur_kernel": 0},
    "no solarize": {"solarize_p": 0.0},
}


def ablations(shards: str, batch: int) -> dict[str, dict[str, float]]:
    """The DALI tcore loader with each ablation: CPU ms per triplet and triplets/s."""
    out = {}
    for name, over in ABLATIONS.items():
        cfg = PipelineConfig(**{**PipelineConfig().__dict__, **over, "repeat": 64, "verify_offsets": False,
                                "num_threads": (os.cpu_count() or 1) + 1})
        loader = build_loader(cfg, shards, batch_size=batch, device="cpu")
        r = measure(lambda loader=loader: loader.iter_epoch(0), batch_size=batch, batches=max(4, 128 // batch),
                    repeats=2, warmup=6)
        out[name] = {"cpu_ms_per_triplet": r["cpu_ms_per_triplet"], "triplets_per_s": r["triplets_per_s"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.dali_op_costs", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="shard directory (its train split's JPEGs are decoded)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per operator")
    ap.add_argument("--batch", type=int, default=16, help="loader batch for the ablations")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    console = Console()
    jpegs = frame_bytes(open_split(args.shards, "train", verify_offsets=False), 200)
    costs = {**operator_costs(jpegs, args.seconds), **opencv_costs(args.seconds)}
    t = Table(title=f"DALI CPU operators, ms of CPU per image ({os.cpu_count()} threads, batch {BATCH})")
    t.add_column("operator")
    t.add_column("CPU ms", justify="right")
    for name, ms in costs.items():
        t.add_row(name, f"{ms:.3f}")
    console.print(t)
    abl = ablations(args.shards, args.batch)
    t = Table(title=f"tcore graph ablations (DALI cpu, batch {args.batch})")
    for col in ("graph", "CPU ms/triplet", "vs full", "triplets/s"):
        t.add_column(col, justify="left" if col == "graph" else "right")
    full = abl["full tcore graph"]["cpu_ms_per_triplet"]
    for name, r in abl.items():
        t.add_row(name, f"{r['cpu_ms_per_triplet']:.1f}", f"{r['cpu_ms_per_triplet'] - full:+.1f}", f"{r['triplets_per_s']:.1f}")
    console.print(t)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"operators_cpu_ms_per_image": costs, "ablations": abl}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
