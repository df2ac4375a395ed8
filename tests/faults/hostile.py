"""A hostile Kinetics-layout collection, generated on the spot, and what the sharder must make of it.

``build_hostile(root)`` writes ``root/annotations/{train,val}.csv`` and class folders holding every
kind of source that breaks naive sharders, and returns the expected outcome of each CSV clip:
``"ok"`` (it must end up in a shard), ``"rejected"`` (in rejected.parquet) or ``"missing"``
(in missing.parquet), keyed by (split, file stem).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from shards.sample import write_audio_only

RATE = 6  # frames per second of most sources: 12 frames = 2 s = 6 output frames at FPS=3
SHARD_FLAGS = ["--fps", "3", "--size", "64", "--min-frames", "4"]


def frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` textured RGB frames whose brightness changes with the index."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 128, size=(h, w, 3), dtype=np.uint8)
    return [(base + (8 * i) % 120).astype(np.uint8) for i in range(n)]


def encode(path: Path, images: list[np.ndarray], codec: str = "libx264", pix_fmt: str = "yuv420p",
           rate: int = RATE, options: dict[str, str] | None = None, rotation: int = 0,
           fmt: str | None = None, times_ms: list[int] | None = None) -> None:
    """Write ``images`` with ``codec``; ``times_ms`` gives irregular presentation times (VFR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(rate))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = options or ({"preset": "ultrafast"} if codec == "libx264" else {})
        if rotation:
            stream.set_display_rotation(rotation)
        if times_ms:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(images):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times_ms:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class _Tree:
    """Collects CSV rows and expected outcomes while files are written."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: dict[str, list[str]] = {"train": [], "val": []}
        self.expected: dict[tuple[str, str], str] = {}
        self.n = 0

    def add(self, split: str, label: str, outcome: str, ytid: str | None = None, ext: str = ".mp4",
            start: int | None = None) -> Path:
        """Register one CSV row; returns the path its file should be written to."""
        self.n += 1
        start = self.n if start is None else start
        ytid = ytid or f"hostile{self.n:04d}"
        stem = f"{ytid}_{start:06d}_{start + 2:06d}"
        self.rows[split].append(f'"{label}",{ytid},{start},{start + 2},{split}')
        self.expected[(split, stem)] = outcome
        path = self.root / split / label / f"{stem}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def build_hostile(root: Path) -> dict[tuple[str, str], str]:
    """Write the hostile tree at ``root``; returns the expected outcome by (split, stem)."""
    t = _Tree(root)
    good = frames(12, 64, 96)
    encode(t.add("train", "plain", "ok"), good)
    t.add("train", "plain", "rejected").write_bytes(b"")  # zero bytes
    trunc = t.add("train", "plain", "rejected")
    encode(trunc, frames(60, 64, 96, seed=3), options={"preset": "ultrafast", "movflags": "faststart"})
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size * 2 // 5])
    encode(t.add("train", "renamed", "ok", ext=".webm"), good, fmt="mp4")  # mp4 bytes in a .webm
    jpeg = io.BytesIO()
    Image.fromarray(good[0]).save(jpeg, format="JPEG")
    t.add("train", "renamed", "rejected").write_bytes(jpeg.getvalue())  # a JPEG named .mp4
    garbage = t.add("train", "renamed", "rejected")
    garbage.write_text("<html>this is an error page, not a video</html>\n")
    write_audio_only(t.add("train", "audio only", "rejected"))
    encode(t.add("train", "one frame", "rejected"), good[:1])
    encode(t.add("train", "portrait", "ok"), frames(12, 96, 64))
    encode(t.add("train", "rotated", "ok"), good, rotation=90)
    vfr = [0, 40, 80, 300, 340, 700, 740, 780, 1000, 1200, 1900, 2000]
    encode(t.add("train", "vfr", "ok", ext=".mkv"), good, codec="mpeg4", rate=25, times_ms=vfr)
    encode(t.add("train", "ten bit", "ok"), good, pix_fmt="yuv420p10le")
    encode(t.add("train", "hevc", "ok"), good, codec="libx265",
           options={"preset": "ultrafast", "x265-params": "log-level=error"})
    encode(t.add("train", "vp9", "ok", ext=".webm"), good, codec="libvpx-vp9",
           options={"deadline": "realtime", "cpu-used": "8"})
    encode(t.add("train", "huge", "ok"), frames(8, 2160, 3840), rate=2)  # 4 s of 4K
    encode(t.add("train", "odd size", "ok"), frames(12, 61, 97), pix_fmt="yuv444p")
    encode(t.add("train", "café au lait ñandú", "ok"), good)  # unicode and spaces in the class
    encode(t.add("train", "a.b c", "ok", ytid="dot.ted id"), good)  # dots and a space in the id
    encode(t.add("train", "ünï", "ok", ytid="клип-ü"), good)  # unicode id
    dup = t.add("train", "dup", "ok", ytid="sameid00000", start=0)
    encode(dup, good)
    encode(dup.parent.parent / "dup_again" / dup.name, good)  # same file name in another class folder
    t.rows["train"].append(t.rows["train"][-1])  # and the same row listed twice
    t.add("train", "plain", "missing")  # listed, never written
    encode(t.root / "train" / "plain" / "unlisted000_000000_000002.mp4", good)  # on disk, in no CSV
    # val: the same youtube id and times as a train clip (keys repeat across splits)
    encode(t.add("val", "dup", "ok", ytid="sameid00000", start=0), good)
    encode(t.add("val", "vp9", "ok", ext=".webm"), good, codec="libvpx-vp9",
           options={"deadline": "realtime", "cpu-used": "8"})
    t.add("val", "plain", "missing")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, rows in t.rows.items():
        text = "label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n"
        (root / "annotations" / f"{split}.csv").write_text(text, encoding="utf-8")
    return t.expected
