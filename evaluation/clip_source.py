"""Clips of videos for action evaluation: the ``ClipSource`` interface and a CPU implementation.

Shapes: a clip batch is ``[N, 3, T, H, W]`` float32, ImageNet-normalised; labels ``[N]`` int64.
Any source (this PIL/numpy one over the shards, or a DALI clip reader) yields the same clips
for the same videos and settings:

- test clips: ``num_clips`` uniformly spaced clips per video (``action_data.uniform_clips``),
  frames resized to ``resize`` (bicubic), centre crop;
- training clips: one random clip per video (``action_data.random_clip``), resized, one random
  ``crop`` square for the whole clip, horizontal flip with p 0.5, and with p ``jitter_p`` a
  colour jitter (brightness, contrast, saturation, hue in random order, one draw per clip).
  Every random choice comes from ``numpy.random.default_rng([seed, epoch, i])`` for the video at
  position i, and the epoch's order from ``default_rng([seed, epoch])``: an epoch is the same
  whoever produces it and however often it was interrupted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from evaluation.action_config import CLIP_READERS, ClipConfig
from evaluation.action_data import Video, random_clip, uniform_clips

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)


class ClipSource(Protocol):
    """Where evaluation gets its clips from."""

    def test_batches(self, videos: Sequence[Video], batch_videos: int) -> Iterator[tuple[list[Video], torch.Tensor]]:
        """Per batch of videos: the videos and their test clips ``[B * num_clips, 3, T, H, W]``
        (video-major: clips of videos[0] first)."""
        ...

    def train_batches(self, videos: Sequence[Video], batch_size: int, epoch: int, seed: int,
                      skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(clips [B, 3, T, H, W], labels [B])``: shuffled, one augmented clip per
        video, the last incomplete batch dropped, the first ``skip`` batches not produced."""
        ...


def make_clip_source(cfg: ClipConfig, reader: str, device: torch.device, workers: int) -> ClipSource:
    """The clip source of an evaluation run: ``reader`` "dali" (``evaluation.dali_clips``: decoding
    on ``device``, nvJPEG on a GPU), "pil" (``ShardClipSource``, threads on the CPU) or "auto"
    (DALI on a GPU, PIL on the CPU, where it measured faster: README "Action recognition")."""
    if reader not in CLIP_READERS:
        raise ValueError(f"clip_reader: '{reader}' is not one of {', '.join(CLIP_READERS)}")
    if reader == "dali" or (reader == "auto" and device.type == "cuda"):
        from evaluation.dali_clips import DaliClipSource

        return DaliClipSource(cfg, device, workers)
    return ShardClipSource(cfg, workers)


def steps_per_epoch(num_videos: int, batch_size: int) -> int:
    """Training batches per epoch (the last incomplete one is dropped, as the papers' loaders do)."""
    return num_videos // batch_size


def normalise(clips: np.ndarray | torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 ``[N, T, H, W, 3]`` (or ``[N, 3, T, H, W]``) -> float ``[N, 3, T, H, W]``, ImageNet mean/std."""
    u = torch.as_tensor(clips)
    if channels_last:
        u = u.permute(0, 4, 1, 2, 3)
    x = torch.empty(u.shape, dtype=torch.float32)
    x.copy_(u)  # one strided pass, then two in place
    return x.sub_(MEAN * 255).mul_(1 / (255 * STD))


class ShardClipSource:
    """Decodes the needed JPEG frames of each video straight from the shards with PIL, on threads."""

    def __init__(self, cfg: ClipConfig, workers: int = 2) -> None:
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(max(1, workers))

    def frames(self, video: Video, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Frame index -> RGB uint8 ``[H, W, 3]`` resized to ``cfg.resize``, each frame decoded once."""
        jpegs = video.ref.frame_jpegs()
        h, w = self.cfg.resize
        out = {}
        for i in np.unique(indices).tolist():
            img = Image.open(io.BytesIO(jpegs[i])).convert("RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.BICUBIC)
            out[i] = np.asarray(img)
        return out

    def _test_video(self, video: Video) -> np.ndarray:
        c = self.cfg
        idx = uniform_clips(video.num_frames, c.clip_len, c.stride, c.num_clips)
        frames = self.frames(video, idx)
        y0 = int(round((c.resize[0] - c.crop) / 2))
        x0 = int(round((c.resize[1] - c.crop) / 2))
        return np.stack([[frames[i][y0:y0 + c.crop, x0:x0 + c.crop] for i in row] for row in idx])

    def test_batches(self, videos: Sequence[Video], batch_videos: int) -> Iterator[tuple[list[Video], torch.Tensor]]:
        for start in range(0, len(videos), batch_videos):
            chunk = list(videos[start:start + batch_videos])
            clips = list(self.pool.map(self._test_video, chunk))
            yield chunk, normalise(np.concatenate(clips))

    def train_clip(self, video: Video, rng: np.random.Generator) -> torch.Tensor:
        """One augmented training clip ``[3, T, crop, crop]`` (uint8 values, not yet normalised)."""
        c = self.cfg
        idx = random_clip(video.num_frames, c.clip_len, c.stride, rng)
        frames = self.frames(video, idx)
        y0 = int(rng.integers(0, c.resize[0] - c.crop + 1))
        x0 = int(rng.integers(0, c.resize[1] - c.crop + 1))
        clip = np.stack([frames[i][y0:y0 + c.crop, x0:x0 + c.crop] for i in idx])  # [T, h, w, 3]
        if c.flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # [T, 3, h, w]
        if c.jitter_p > 0 and rng.random() < c.jitter_p:
            x = colour_jitter(x, c.jitter, rng)
        return x.permute(1, 0, 2, 3)

    def train_batches(self, videos: Sequence[Video], batch_size: int, epoch: int, seed: int,
                      skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(videos))
        for b in range(skip, steps_per_epoch(len(videos), batch_size)):
            picks = order[b * batch_size:(b + 1) * batch_size].tolist()

            def make(i: int) -> torch.Tensor:
                return self.train_clip(videos[i], np.random.default_rng([seed, epoch, i]))

            clips = torch.stack(list(self.pool.map(make, picks)))  # [B, 3, T, h, w] uint8
            yield normalise(clips, channels_last=False), torch.tensor([videos[i].label for i in picks], dtype=torch.int64)


def colour_jitter(x: torch.Tensor, strength: tuple[float, float, float, float],
                  rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue of a uint8 clip ``[T, 3, H, W]``, one draw for all
    frames, in a random order (factors uniform in [max(0, 1 - s), 1 + s], hue in [-h, h])."""
    b, c, s, h = strength
    ops = [
        (TF.adjust_brightness, rng.uniform(max(0.0, 1 - b), 1 + b)) if b else None,
        (TF.adjust_contrast, rng.uniform(max(0.0, 1 - c), 1 + c)) if c else None,
        (TF.adjust_saturation, rng.uniform(max(0.0, 1 - s), 1 + s)) if s else None,
        (TF.adjust_hue, rng.uniform(-h, h)) if h else None,
    ]
    ops = [op for op in ops if op is not None]
    for k in rng.permutation(len(ops)).tolist():
        fn, factor = ops[k]
        x = fn(x, float(factor))
    return x
