"""One clip -> a frame-indexed JPEG stream: decode, rotate, resample fps, resize, encode.

Decoding goes through PyAV (FFmpeg), so anything FFmpeg reads works. Frames are resampled by
presentation time ("sample and hold": output frame k shows the source frame on screen at
``t0 + k / fps``), which is correct for variable frame rate. Resizing uses FFmpeg's swscale
(bicubic) straight from the decoded YUV; JPEG encoding uses libjpeg-turbo through Pillow,
baseline, 4:2:0, which nvJPEG's hardware path and libjpeg-turbo both decode fast.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

av.logging.set_level(av.logging.PANIC)


class ClipRejected(Exception):
    """A clip that cannot be used; ``stage`` says where it failed."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class EncodedClip:
    """A clip's frames as concatenated JPEGs plus its offsets table and facts."""

    mjpeg: bytes
    offsets: np.ndarray  # int64, num_frames + 1
    fps: float
    width: int
    height: int
    source_fps: float
    source_frames: int
    source_width: int
    source_height: int
    source_codec: str
    rotation: int

    @property
    def num_frames(self) -> int:
        return len(self.offsets) - 1


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side at ``short_side``, both sides even, aspect kept."""
    if width <= height:
        w = short_side
        h = round(height * short_side / width / 2) * 2
    else:
        h = short_side
        w = round(width * short_side / height / 2) * 2
    return max(w, 2), max(h, 2)


def _open(path: str) -> av.container.InputContainer:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ClipRejected("open", f"unreadable file ({exc.strerror})") from None
    if size == 0:
        raise ClipRejected("open", "zero-byte file")
    try:
        return av.open(path, metadata_errors="ignore")
    except PermissionError:
        raise ClipRejected("open", "permission denied") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ClipRejected("open", f"not a readable video container ({type(exc).__name__})") from None


def _timed_frames(container, stream) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their presentation time in seconds (monotonic)."""
    last = -1e30
    fallback_step = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
    for frame in container.decode(stream):
        t = frame.time
        if t is None:
            t = last + fallback_step if last > -1e29 else 0.0
        if t <= last:  # non-increasing timestamps: keep display order, nudge forward
            t = last + 1e-6
        last = t
        yield t, frame


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> np.ndarray:
    """Resize (swscale bicubic) and rotate a frame; returns HxWx3 uint8."""
    w, h = size if rotation % 180 == 0 else (size[1], size[0])
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    k = (rotation // 90) % 4
    # display-matrix rotation is counter-clockwise in degrees; np.rot90 rotates counter-clockwise
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Baseline 4:2:0 JPEG of an RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buf.getvalue()


def select_frames(
    frames: Iterator[tuple[float, object]], fps: float, last_duration: float
) -> Iterator[tuple[int, object]]:
    """Resample a timed frame stream to ``fps`` by presentation time.

    Yields ``(repeat, frame)``: a frame and how many output slots it fills (sample and hold:
    slot k, at ``t0 + k / fps``, shows the frame on screen then). The last frame stays on
    screen for ``last_duration`` seconds. ``fps == 0`` yields every frame once.
    """
    if fps == 0:
        for _t, frame in frames:
            yield 1, frame
        return
    step = 1.0 / fps
    t0: float | None = None
    k = 0  # next output slot

    def slots_before(limit: float) -> int:
        nonlocal k
        n = max(0, math.ceil((limit - t0) / step - 1e-9) - k)
        k += n
        return n

    prev_t, prev = 0.0, None
    for t, frame in frames:
        if t0 is None:
            t0 = t
        if prev is not None:
            n = slots_before(t)
            if n:
                yield n, prev
        prev_t, prev = t, frame
    if prev is not None:
        n = slots_before(prev_t + last_duration)
        if n:
            yield n, prev


def probe_duration(path: str) -> float | None:
    """A video's duration in seconds from its container header (no decoding), if readable."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return None
            return _stream_duration(container, container.streams.video[0])
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None


def _stream_duration(container, stream) -> float | None:
    """The container's claimed duration of the video stream in seconds, if it says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None


def encode_clip(path: str, size: int, quality: int, fps: float, min_frames: int, *,
                threads: int = 0, max_frames: int = 0) -> EncodedClip:
    """Decode ``path`` and return its frames as JPEGs, or raise ClipRejected.

    ``threads``: decoder threads (0: FFmpeg's choice). ``max_frames``: stop after this many
    output frames (0: the whole clip; used to estimate sizes cheaply).
    """
    container = _open(path)
    try:
        if not container.streams.video:
            raise ClipRejected("probe", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        src_rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        ctx = stream.codec_context
        clip = EncodedClip(b"", np.zeros(1, "<i8"), fps or src_rate, 0, 0, src_rate, 0,
                           ctx.width, ctx.height, ctx.name, 0)
        chunks, last_t = _encode_frames(container, stream, clip, size, quality, fps, max_frames)
        claimed = _stream_duration(container, stream)
        if not max_frames and claimed and claimed > 1.0 and last_t + 2.0 / src_rate < 0.9 * claimed:
            raise ClipRejected("decode", f"truncated: frames stop at {last_t:.2f}s of {claimed:.2f}s")
        if len(chunks) < min_frames:
            raise ClipRejected(
                "frames", f"{len(chunks)} frames after resampling, fewer than MIN_FRAMES={min_frames}"
            )
        clip.mjpeg = b"".join(chunks)
        clip.offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype("<i8")
        return clip
    finally:
        container.close()


def _encode_frames(container, stream, clip: EncodedClip, size: int, quality: int, fps: float, max_frames: int):
    """Decode, resample and JPEG-encode; fills size/rotation/source_frames of ``clip``."""
    chunks: list[bytes] = []
    last_t = 0.0

    def counted():
        nonlocal last_t
        for t, frame in _timed_frames(container, stream):
            clip.source_frames += 1
            last_t = t
            yield t, frame

    try:
        for repeat, frame in select_frames(counted(), fps, 1.0 / clip.source_fps):
            if not chunks:
                clip.rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
                w, h = frame.width, frame.height
                if clip.rotation % 180:
                    w, h = h, w
                clip.width, clip.height = output_size(w, h, size)
            jpeg = encode_jpeg(_to_rgb(frame, (clip.width, clip.height), clip.rotation), quality)
            chunks.extend([jpeg] * repeat)
            if max_frames and len(chunks) >= max_frames:
                break
    except av.error.FFmpegError as exc:
        raise ClipRejected(
            "decode", f"decode error after {clip.source_frames} frames ({type(exc).__name__}): truncated or corrupt"
        ) from None
    if not chunks:
        raise ClipRejected("decode", "no decodable video frames")
    return chunks, last_t
