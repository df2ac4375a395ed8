"""Decoding chosen frames of an mp4 with PyAV, torchcodec or decord2 (the mp4 peers' decoders).

Each decoder is a function ``(path, frames) -> (uint8 tensor [N, H, W, 3], decoded)`` for sorted,
distinct source frame numbers: seek to the keyframe before a run of wanted frames and decode
forward through the run; a new run starts where a keyframe lies between two wanted frames (a
seek is then cheaper than decoding through). ``decoded`` is the frames decoded: counted for
PyAV; for torchcodec and decord2, which do not report it, the same rule computed from the
keyframe positions (read once per video by demuxing, no decoding). Each decoder uses one
thread: the loaders run one decoder per worker process.

``PREFERENCE`` orders them fastest first for clips and for triplets as measured by
``tools/bench_video_decoders.py`` and the profiler (see the README); ``best_decoder()`` is the
first one installed (PyAV always is).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

Decoder = Callable[[Path, list[int]], tuple[torch.Tensor, int]]


@functools.lru_cache(maxsize=4096)
def keyframes(path: str) -> tuple[int, ...]:
    """Frame numbers of the keyframes of a video's first video stream (demuxed, not decoded)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate, tb, start = float(stream.average_rate), stream.time_base, stream.start_time or 0
        return tuple(sorted(int(round(float((p.pts - start) * tb) * rate))
                            for p in container.demux(stream) if p.is_keyframe and p.pts is not None))


def runs(frames: list[int], keys: tuple[int, ...]) -> list[list[int]]:
    """Wanted frames (sorted) cut where a keyframe lies between two of them."""
    out = [[frames[0]]]
    for prev, cur in zip(frames, frames[1:]):
        if bisect.bisect_right(keys, cur) > bisect.bisect_right(keys, prev):
            out.append([])
        out[-1].append(cur)
    return out


def decoded_count(frames: list[int], keys: tuple[int, ...]) -> int:
    """Frames decoded by seeking to the keyframe before each run and decoding through it."""
    total = 0
    for run in runs(frames, keys):
        i = bisect.bisect_right(keys, run[0]) - 1
        total += run[-1] - (keys[i] if i >= 0 else 0) + 1
    return total


@functools.lru_cache(maxsize=4096)
def video_info(path: str) -> tuple[int, int, int, float]:
    """(frame count, height, width, frame rate) of a video: the container's count, or duration ×
    rate when it has none."""
    with av.open(path) as container:
        s = container.streams.video[0]
        rate = float(s.average_rate)
        count = int(s.frames) or int(float(s.duration * s.time_base) * rate)
        return count, s.height, s.width, rate


def pyav_frames(path: Path, frames: list[int]) -> tuple[torch.Tensor, int]:
    """PyAV: one seek per run, decode forward, frames matched by their timestamps."""
    out: dict[int, np.ndarray] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        rate, tb, start = float(stream.average_rate), stream.time_base, stream.start_time or 0
        for run in runs(frames, keyframes(str(path))):
            container.seek(start + int(run[0] / rate / tb), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                decoded += 1
                idx = int(round(float((frame.pts - start) * tb) * rate))
                if idx in run and idx not in out:
                    out[idx] = frame.to_ndarray(format="rgb24")
                if idx >= run[-1]:
                    break
    missing = [f for f in frames if f not in out]
    if missing:
        raise ValueError(f"video {path}: frames {missing} not found when decoding")
    return torch.from_numpy(np.stack([out[f] for f in frames])), decoded


def torchcodec_frames(path: Path, frames: list[int]) -> tuple[torch.Tensor, int]:
    """torchcodec's ``VideoDecoder.get_frames_at`` (exact seek mode, one FFmpeg thread)."""
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    return dec.get_frames_at(frames).data, decoded_count(frames, keyframes(str(path)))


def decord_frames(path: Path, frames: list[int]) -> tuple[torch.Tensor, int]:
    """decord2's ``VideoReader.get_batch`` (one thread)."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return torch.from_numpy(reader.get_batch(frames).asnumpy()), decoded_count(frames, keyframes(str(path)))


def _installed(module: str) -> bool:
    """The module imports (torchcodec imports without FFmpeg's shared libraries: it then fails on
    first use, naming them)."""
    try:
        __import__(module)
        return True
    except ImportError:
        return False


DECODERS: dict[str, tuple[str, Decoder]] = {
    "decord2": ("decord", decord_frames),
    "torchcodec": ("torchcodec", torchcodec_frames),
    "pyav": ("av", pyav_frames),
}
# fastest first per kind of frame set (tools/bench_video_decoders.py and the profiler, README
# "mp4 decoders"): runs of clip frames, decord2 (1.5x PyAV's frames/s, 0.9x its CPU); the three
# scattered frames of a triplet, PyAV (decord2's wall time is lower but its CPU per frame and the
# tcore mp4 loader's CPU per triplet higher)
PREFERENCE = {"clips": ("decord2", "torchcodec", "pyav"), "triplets": ("pyav", "decord2", "torchcodec")}


def available_decoders() -> list[str]:
    """The installed decoders, in ``DECODERS`` order."""
    return [name for name, (module, _) in DECODERS.items() if _installed(module)]


def best_decoder(name: str = "auto", frames: str = "clips") -> tuple[str, Decoder]:
    """(name, function) of decoder ``name``, or for ``auto`` the first installed one of
    ``PREFERENCE[frames]`` (``clips`` or ``triplets``)."""
    if name == "auto":
        name = next(n for n in PREFERENCE[frames] if _installed(DECODERS[n][0]))
    if name not in DECODERS:
        raise ValueError(f"mp4 decoder '{name}': choose auto or one of {list(DECODERS)}")
    if not _installed(DECODERS[name][0]):
        raise ValueError(f"mp4 decoder '{name}': python module '{DECODERS[name][0]}' is not installed")
    return name, DECODERS[name][1]
