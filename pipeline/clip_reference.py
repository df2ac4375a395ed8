"""Reference loaders of the clip workloads (``dualvar``, ``cstp``, ``localglobal``), for comparison with DALI.

Both are a ``DataLoader`` whose workers each make whole batches, so that a batch is drawn exactly
as DALI's range mode draws it: the epoch's sample order (``pipeline.range_source.EpochOrder``,
rank 0 of 1) and the batch's plan (``pipeline.clip_plan.plan_batch``, seeded by (seed, 0), epoch,
batch): the same frames, crop boxes, flips, rotations, colour maps and blur taps, the same clip
sizes.

- ``torch``: the plan's JPEGs read by byte range from the shards (``pread``, as the range reader
  does; CRC-32 checked on a v2 set unless ``frame_check=none``), each distinct frame decoded once
  with ``torchvision.io.decode_jpeg``, the clips made with torch ops.
- ``mp4``: the source videos (``root / sample.source``); the plan is drawn from each video's own
  frame count, size and rate, and only the needed frames are decoded (seek to the keyframe before
  each run of wanted frames, decode through it) with the fastest installed decoder of
  ``pipeline.video_decode``.

Per clip, as ``pipeline.clip_views`` does it: crop the box (rounded to whole pixels; DALI
resamples the exact box) and resize to the clip size (antialiased, ``clip_interp``), flip, rotate
(bilinear, black fill), colour map rounded to uint8, blur (reflected borders) rounded to uint8,
normalise. Shapes: frames [F, 3, H, W] while a clip is made; delivered clips [3, F, S, S] float32,
stacked as ``pipeline.clip_plan.Layout.outputs`` says; plus the plan's labels, ``frame_idx`` [B, N]
(the plan's frames) and ``decoded`` [B] (frames decoded per sample). One loader epoch is
``cfg.repeat`` passes over the split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.clip_plan import layout_of, plan_batch
from pipeline.config import PipelineConfig
from pipeline.dataset import Split
from pipeline.integrity import MJPEG_SIZE, fetch, sample_table
from pipeline.range_source import EpochOrder, clip_stats
from pipeline.video_decode import best_decoder, video_info
from shards.card import has_checksums
from shards.integrity import REASONS

INTERP = {"cubic": v2.InterpolationMode.BICUBIC, "linear": v2.InterpolationMode.BILINEAR}


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255)


def colour(x: torch.Tensor, m: np.ndarray, offset: np.ndarray, pivot: str) -> torch.Tensor:
    """x -> M·x + offset per pixel (``mid``), or + offset · (each frame's mean RGB) (``mean``)."""
    y = torch.einsum("ij,fjhw->fihw", torch.from_numpy(m), x)
    off = torch.from_numpy(offset)
    if pivot == "mid":
        return _uint8(y + off[None, :, None, None])
    shift = (x.mean((2, 3)) * off).sum(1)  # [F]
    return _uint8(y + shift[:, None, None, None])


def blur(x: torch.Tensor, taps: np.ndarray) -> torch.Tensor:
    """Separable blur with ``taps`` [w] along rows then columns; identity taps are skipped."""
    if taps.max() >= 1.0:
        return x
    f, c, h, w = x.shape
    k = torch.from_numpy(taps)
    r = len(taps) // 2
    y = F.pad(x.reshape(f * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return _uint8(y.reshape(f, c, h, w))


def make_clip(frames: torch.Tensor, plan: dict, b: int, k: int, size: int, cfg: PipelineConfig) -> torch.Tensor:
    """Clip k of sample b from its frames uint8 [F, 3, H, W]: [3, F, size, size] float32."""
    h, w = frames.shape[-2:]
    (ys, xs), (ye, xe) = plan[f"roi_start/{k}"][b].tolist(), plan[f"roi_end/{k}"][b].tolist()
    top, left = round(ys * h), round(min(xs, xe) * w)
    ch, cw = max(1, round(ye * h) - top), max(1, round(max(xs, xe) * w) - left)
    x = TF.resized_crop(frames, top, left, ch, cw, [size, size], interpolation=INTERP[cfg.clip_interp], antialias=True)
    if xs > xe:
        x = x.flip(-1)
    if f"angle/{k}" in plan and plan[f"angle/{k}"][b] != 0:
        x = TF.rotate(x, float(plan[f"angle/{k}"][b]), interpolation=v2.InterpolationMode.BILINEAR, fill=0)
    x = x.float()
    if f"colour/{k}" in plan:
        x = colour(x, plan[f"colour/{k}"][b], plan[f"offset/{k}"][b], cfg.contrast_pivot)
    if f"blur_rows/{k}" in plan:
        x = blur(x, plan[f"blur_rows/{k}"][b].reshape(-1))
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()


class ClipBatches(Dataset):
    """Item b: batch b of ``epoch`` (see the module docstring)."""

    def __init__(self, kind: str, cfg: PipelineConfig, split: Split, batch_size: int, epoch: int,
                 root: str | Path | None = None, decoder: str = "auto"):
        self.kind, self.cfg, self.split, self.batch_size, self.epoch = kind, cfg, split, batch_size, epoch
        self.root = Path(root) if root is not None else None
        self.batches = len(split.samples) * cfg.repeat // batch_size
        self.order = EpochOrder(len(split.samples), cfg.seed, 0, 1, self.batches * batch_size, cfg.repeat)
        self.layout = layout_of(cfg)
        self.tars = sorted({s.tar for s in split.samples})
        self.table = sample_table(split.samples, self.tars, split.damaged)
        self.crc = cfg.frame_check != "none" and has_checksums(split.card)
        self.decoder = best_decoder(decoder) if kind == "mp4" else None
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return self.batches

    def _stats(self, ids: np.ndarray) -> np.ndarray:
        if self.kind == "torch":
            return clip_stats([self.split.samples[i] for i in ids])
        return np.array([video_info(str(self._video(i))) for i in ids], dtype=np.float64)

    def _video(self, sid: int) -> Path:
        path = self.root / self.split.samples[sid].source
        if not path.is_file():
            raise ValueError(f"video {path}: missing (is --root the collection the shards were made from?)")
        return path

    def _shard_frames(self, sid: int, wanted: list[int]) -> tuple[dict[int, torch.Tensor], int]:
        row = self.table[sid].tolist()
        fd = self._fds.get(row[0])
        if fd is None:
            fd = self._fds[row[0]] = os.open(self.tars[row[0]], os.O_RDONLY)
        got, problem = fetch(fd, row, wanted, self.crc, False)
        if problem is not None or row[MJPEG_SIZE] <= 0:
            reason = REASONS[problem[1]] if problem else "empty"
            raise ValueError(f"shard {self.tars[row[0]]}: sample {self.split.samples[sid].key}: {reason}")
        return {f: decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)) for f, data in zip(wanted, got)}, \
            len(wanted)

    def _video_frames(self, sid: int, wanted: list[int]) -> tuple[dict[int, torch.Tensor], int]:
        frames, decoded = self.decoder[1](self._video(sid), wanted)
        return dict(zip(wanted, frames.permute(0, 3, 1, 2))), decoded

    def __getitem__(self, batch: int) -> dict:
        b = self.batch_size
        ids = self.order(self.epoch)[batch * b:(batch + 1) * b]
        st = self._stats(ids)
        plan = plan_batch(self.cfg, (self.cfg.seed, 0), self.epoch, batch, st[:, 0], st[:, 1], st[:, 2], st[:, 3])
        lay = self.layout
        clips: list[list[torch.Tensor]] = [[] for _ in lay.clips]
        decoded = []
        for i, sid in enumerate(ids.tolist()):
            slots = plan["frames"][i].tolist()
            wanted = sorted(set(slots))
            read = self._shard_frames if self.kind == "torch" else self._video_frames
            by_frame, n = read(sid, wanted)
            decoded.append(n)
            for k, ks in enumerate(lay.clips):
                seq = torch.stack([by_frame[slots[s]] for s in ks])
                clips[k].append(make_clip(seq, plan, i, k, lay.sizes[k], self.cfg))
        out = {}
        for name, ks in lay.outputs.items():
            per_clip = [torch.stack(clips[k]) for k in ks]  # [B, 3, F, S, S] each
            out[name] = per_clip[0] if name == "global" else torch.stack(per_clip, 1)
        for name in lay.labels:
            out[name] = torch.from_numpy(plan[name])
        out["frame_idx"] = torch.from_numpy(plan["frames"])
        out["decoded"] = torch.tensor(decoded)
        return out


class ClipReferenceLoader:
    """``iter_epoch`` over a DataLoader of ``ClipBatches`` (``kind``: ``torch`` or ``mp4``)."""

    def __init__(self, kind: str, cfg: PipelineConfig, split: Split, *, batch_size: int, num_workers: int,
                 root: str | Path | None = None, decoder: str = "auto"):
        if kind not in ("torch", "mp4"):
            raise ValueError(f"clip reference loader: kind must be torch or mp4, got {kind!r}")
        if kind == "mp4" and root is None:
            raise ValueError("the mp4 clip loader needs the source collection's root directory")
        self.kind, self.cfg, self.split, self.root = kind, cfg, split, root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.batches = len(split.samples) * cfg.repeat // batch_size
        self.decoder = best_decoder(decoder)[0] if kind == "mp4" else "torchvision.io.decode_jpeg"

    def __len__(self) -> int:
        return self.batches

    def iter_epoch(self, epoch: int) -> Iterator[dict]:
        ds = ClipBatches(self.kind, self.cfg, self.split, self.batch_size, epoch, self.root, self.decoder)
        dl = DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.num_workers,
                        prefetch_factor=2 if self.num_workers else None)
        yield from dl
