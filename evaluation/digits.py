"""Digit world: generated videos in which colour and position identify nothing.

Built from real, bundled data: the 1,797 handwritten digits (8×8 scans, 10 classes) that ship
inside scikit-learn. Every scene is a slowly panning cluttered background with textured digits
that move, grow or shrink, turn a little and occlude each other. Objects, background blobs and
clutter (small digits) all draw their colours from the *same* palette distribution and carry the
same kind of texture, so neither colour nor position says what or where an object is; the shape
does. Each frame has its own lighting (exposure, contrast, white balance drawn anew), so that
matching raw colours from frame to frame is unreliable too. Exact masks and labels are known.

Three outputs, all deterministic for a seed:

- ``write_kinetics(root)``: training clips (and labelled held-out clips) in the Kinetics layout
  (``annotations/{train,val}.csv``, ``<split>/<class>/<ytid>_<start>_<end>.mp4``), so that
  ``make shards DATA=kinetics`` shards them. A clip's label is the digit class of its main object,
  whose box in every frame is in ``digit_boxes.json``.
- ``write_davis(root)``: held-out videos in the DAVIS-2017 layout (``JPEGImages/480p``,
  ``Annotations/480p``, ``ImageSets/2017/val.txt``), 2-3 digits each, for label propagation.
- held-out clips use digit scans that no training clip uses (scans split by index).

    python -m evaluation.digits OUT [--train 192 --val 96 --davis 12]
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.datasets import mark_generated, write_index_png

HW = (128, 160)  # frame height, width
FPS = 10
BOXES = "digit_boxes.json"
TRAIN_SCANS = 1200  # scans [0, 1200) for training clips, the rest for held-out videos


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: images [1797, 8, 8] in [0, 1] and labels [1797]."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the digit world needs scikit-learn's bundled digits (pip install scikit-learn)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (data[:, :64] / 16.0).reshape(-1, 8, 8), data[:, 64].astype(np.int64)


def palette_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour of the shared palette: any hue, mid saturation and value (RGB in [0, 255])."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.25, 0.9), rng.uniform(0.3, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def smooth_field(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of size ``hw`` (bicubic upsampling of ``cells``² noise)."""
    low = Image.fromarray(rng.uniform(0, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.clip(np.asarray(low.resize((hw[1], hw[0]), Image.BICUBIC)), 0, 1)


def texture(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Two palette colours mixed by a smooth field, plus grain: float RGB [h, w, 3]."""
    a, b = palette_colour(rng), palette_colour(rng)
    mix = smooth_field(rng, hw, int(rng.integers(3, 7)))[..., None]
    return a * mix + b * (1 - mix) + rng.normal(0, 10, (*hw, 1)).astype(np.float32)


def glyph_alpha(scan: np.ndarray, size: int, angle: float) -> np.ndarray:
    """An 8×8 scan as a crisp alpha mask of ``size``² pixels, turned by ``angle`` degrees."""
    img = Image.fromarray(scan.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    img = img.rotate(angle, resample=Image.BILINEAR)
    return np.clip((np.asarray(img) - 0.3) * 3.0, 0.0, 1.0)


def paste(canvas: np.ndarray, alpha: np.ndarray, tex: np.ndarray, cy: float, cx: float,
          ids: np.ndarray | None = None, oid: int = 0) -> None:
    """Alpha-blend ``tex`` through ``alpha`` centred at (cy, cx); mark ``alpha > 0.5`` as ``oid``."""
    h, w = alpha.shape
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if ye <= ys or xe <= xs:
        return
    a = alpha[ys - y0:ye - y0, xs - x0:xe - x0, None]
    t = tex[ys - y0:ye - y0, xs - x0:xe - x0]
    canvas[ys:ye, xs:xe] = a * t + (1 - a) * canvas[ys:ye, xs:xe]
    if ids is not None:
        ids[ys:ye, xs:xe][a[..., 0] > 0.5] = oid


@dataclass
class Mover:
    """One digit: its scan, texture and a smooth path of centre, size and angle over the clip."""

    scan: np.ndarray
    label: int
    tex: np.ndarray  # [S, S, 3] at the largest size it reaches
    start: np.ndarray  # (y, x)
    velocity: np.ndarray  # pixels per frame
    size: tuple[float, float]  # size at the first and last frame
    angle: tuple[float, float]

    def at(self, t: float, n: int) -> tuple[float, float, int, float]:
        s = t / max(n - 1, 1)
        y, x = self.start + self.velocity * t
        return y, x, int(round(self.size[0] + s * (self.size[1] - self.size[0]))), \
            self.angle[0] + s * (self.angle[1] - self.angle[0])


def background(rng: np.random.Generator, hw: tuple[int, int], scans: np.ndarray) -> np.ndarray:
    """Palette blobs and 40-60 small textured digits (clutter), float RGB [H, W, 3]."""
    a, b, c = (palette_colour(rng) for _ in range(3))
    m1, m2 = smooth_field(rng, hw, 5)[..., None], smooth_field(rng, hw, 4)[..., None]
    canvas = (a * m1 + b * (1 - m1)) * m2 + c * (1 - m2)
    for _ in range(int(rng.integers(40, 61))):
        size = int(rng.integers(10, 26))
        alpha = glyph_alpha(scans[rng.integers(len(scans))], size, rng.uniform(-30, 30))
        paste(canvas, alpha, texture(rng, (size, size)), rng.uniform(0, hw[0]), rng.uniform(0, hw[1]))
    return canvas + rng.normal(0, 6, (*hw, 1)).astype(np.float32)


def pick_scan(rng: np.random.Generator, labels: np.ndarray, label: int | None = None) -> int:
    """Index of a scan of class ``label`` (any class when None): the first draw ``make_mover`` makes."""
    pool = np.flatnonzero(labels == label) if label is not None else np.arange(len(labels))
    return int(rng.choice(pool))


def make_mover(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, n: int,
               size_range: tuple[int, int], label: int | None = None) -> Mover:
    """A digit of class ``label`` (any when None) crossing part of the frame over ``n`` frames."""
    i = pick_scan(rng, labels, label)
    s0, s1 = rng.uniform(*size_range), rng.uniform(*size_range)
    h, w = HW
    start = np.array([rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.25 * w, 0.75 * w)])
    end = np.array([rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.25 * w, 0.75 * w)])
    big = int(max(s0, s1)) + 2
    return Mover(scans[i], int(labels[i]), texture(rng, (big, big)), start, (end - start) / max(n - 1, 1),
                 (s0, s1), (rng.uniform(-20, 20), rng.uniform(-20, 20)))


RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
YIQ2RGB = np.linalg.inv(RGB2YIQ).astype(np.float32)
LIGHTING = {"brightness": 0.25, "contrast": 0.25, "saturation": 0.4, "hue_degrees": 30.0}


def relight(img: np.ndarray, rng: np.random.Generator, strength: dict[str, float] = LIGHTING) -> np.ndarray:
    """One frame's lighting change (exposure, contrast, white balance): float RGB [H, W, 3] -> same.

    In YIQ: luma times a brightness factor, then stretched about its mean by a contrast factor;
    chroma scaled by a saturation factor and turned by a hue angle; each factor uniform in
    1 ± strength (hue: ± degrees), drawn independently for every frame.
    """
    b, c, sat = (1 + rng.uniform(-strength[k], strength[k]) for k in ("brightness", "contrast", "saturation"))
    th = np.deg2rad(rng.uniform(-strength["hue_degrees"], strength["hue_degrees"]))
    yiq = img @ RGB2YIQ.T
    y = yiq[..., 0] * b
    yiq[..., 0] = (y - y.mean()) * c + y.mean()
    rot = sat * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], dtype=np.float32)
    yiq[..., 1:] = yiq[..., 1:] @ rot.T
    return yiq @ YIQ2RGB.T


def render(bg: np.ndarray, pan: np.ndarray, movers: list[Mover], n: int,
           rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (uint8 RGB) and label maps (0 = background, i + 1 = movers[i], later on top)."""
    h, w = HW
    frames, maps = [], []
    for t in range(n):
        oy, ox = (pan[0] + pan[1] * t).round().astype(int)
        canvas = bg[oy:oy + h, ox:ox + w].copy()
        ids = np.zeros((h, w), dtype=np.uint8)
        for k, m in enumerate(movers):
            y, x, size, angle = m.at(t, n)
            alpha = glyph_alpha(m.scan, size, angle)
            tex = np.asarray(Image.fromarray(np.clip(m.tex, 0, 255).astype(np.uint8)).resize((size, size)),
                             dtype=np.float32)
            paste(canvas, alpha, tex, y, x, ids, k + 1)
        if rng is not None:
            canvas = relight(canvas, rng)
        frames.append(np.clip(canvas, 0, 255).astype(np.uint8))
        maps.append(ids)
    return frames, maps


def scene(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, n: int,
          movers: list[Mover], lighting: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render ``movers`` over a fresh background panning by up to ~1 px per frame, each frame
    under its own lighting (``relight``) unless ``lighting`` is False."""
    h, w = HW
    margin = n + 8
    bg = background(rng, (h + 2 * margin, w + 2 * margin), scans)
    v = rng.uniform(-1.0, 1.0, 2)
    start = np.array([margin, margin]) - v * n / 2
    return render(bg, np.stack([start, v]), movers, n, rng if lighting else None)


def main_boxes(maps: list[np.ndarray], oid: int) -> list[list[int]]:
    """Per frame, the box ``[x0, y0, x1, y1]`` (exclusive ends) of label ``oid``'s visible pixels
    (the whole frame when it is fully hidden)."""
    out = []
    for ids in maps:
        ys, xs = np.nonzero(ids == oid)
        out.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs)
                   else [0, 0, ids.shape[1], ids.shape[0]])
    return out


def clip(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, n: int, label: int
         ) -> tuple[list[np.ndarray], list[list[int]]]:
    """A training/held-out clip: one main digit of class ``label`` (48-80 px), in front of a smaller
    distractor half of the time. Returns the frames and the main digit's box in each frame."""
    movers = [make_mover(rng, scans, labels, n, (48, 80), label)]
    if rng.uniform() < 0.5:
        movers.insert(0, make_mover(rng, scans, labels, n, (24, 40)))  # behind the main digit
    frames, maps = scene(rng, scans, labels, n, movers)
    return frames, main_boxes(maps, len(movers))


def scan_split(held_out: bool) -> tuple[np.ndarray, np.ndarray]:
    scans, labels = load_digits()
    part = slice(TRAIN_SCANS, None) if held_out else slice(0, TRAIN_SCANS)
    return scans[part], labels[part]


def clean_crops(n: int, held_out: bool, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The main digits of the first ``n`` clips of a split (the scans ``write_kinetics`` draws for
    them) drawn clean: white on black, upright, centred, filling 3/4 of a ``size``² square, with no
    texture, clutter, motion or lighting. uint8 ``[n, 1, 3, size, size]`` and labels ``[n]``: the
    same shapes the world's k-NN crops are built to, for a sanity check of the supervised ceiling."""
    scans, labels = scan_split(held_out)
    out = np.zeros((n, 1, 3, size, size), dtype=np.uint8)
    picked = [pick_scan(np.random.default_rng([seed, int(held_out), i]), labels, i % 10) for i in range(n)]
    for i, k in enumerate(picked):
        canvas = np.zeros((size, size, 3), dtype=np.float32)
        paste(canvas, glyph_alpha(scans[k], round(size * 0.75), 0.0), np.full((size, size, 3), 255.0, np.float32),
              size / 2, size / 2)
        out[i, 0] = canvas.round().astype(np.uint8).transpose(2, 0, 1)
    return out, labels[picked]


def write_kinetics(root: str | Path, n_train: int = 192, n_val: int = 96, frames: int = 40,
                   seed: int = 0) -> Path:
    """Training and labelled held-out clips in the Kinetics layout (classes "digit 0" .. "digit 9"),
    and ``ROOT/digit_boxes.json``: clip key -> the main digit's box ``[x0, y0, x1, y1]`` per frame."""
    from shards.sample import write_video, youtube_id

    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[list[int]]] = {}
    for split, count, held in (("train", n_train, False), ("val", n_val, True)):
        scans, labels = scan_split(held)
        rows = []
        for i in range(count):
            rng = np.random.default_rng([seed, int(held), i])
            label = i % 10
            ytid = youtube_id(f"digits-{seed}-{split}-{i}")
            name = f"digit {label}"
            path = root / split / name / f"{ytid}_{0:06d}_{frames // FPS:06d}.mp4"
            imgs, boxes[f"{ytid}_{0:06d}_{frames // FPS:06d}"] = clip(rng, scans, labels, frames, label)
            write_video(path, imgs, fps=FPS)
            rows.append([name, ytid, 0, frames // FPS, split])
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows(rows)
    (root / BOXES).write_text(json.dumps(boxes) + "\n")
    return root


def write_davis(root: str | Path, n_videos: int = 12, frames: int = 24, seed: int = 0) -> Path:
    """Held-out videos in the DAVIS-2017 layout, 2-3 digits each (ids 1..3), annotated every frame."""
    root = Path(root)
    scans, labels = scan_split(held_out=True)
    names = []
    for v in range(n_videos):
        rng = np.random.default_rng([seed, 7, v])
        k = 2 + v % 2
        movers = [make_mover(rng, scans, labels, frames, (36, 64)) for _ in range(k)]
        imgs, maps = scene(rng, scans, labels, frames, movers)
        name = f"digits{v:02d}"
        names.append(name)
        for t, (img, ids) in enumerate(zip(imgs, maps)):
            jpg = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(jpg, quality=95)
            write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
    split = root / "ImageSets" / "2017" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(names) + "\n")
    mark_generated(root, "evaluation.digits: textured handwritten digits over digit clutter, shared palette")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the digit world: Kinetics-layout clips and DAVIS-layout videos.")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=192)
    ap.add_argument("--val", type=int, default=96)
    ap.add_argument("--davis", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.train or args.val:
        write_kinetics(out / "kinetics", args.train, args.val, seed=args.seed)
        print(f"wrote {out}/kinetics ({args.train} train + {args.val} val clips)")
    if args.davis:
        write_davis(out / "davis", args.davis, seed=args.seed)
        print(f"wrote {out}/davis ({args.davis} videos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
