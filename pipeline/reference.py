"""Reference loaders built only from the usual PyTorch tools, for comparison with DALI.

- ``torch``: ``webdataset`` streams our shards in ``DataLoader`` workers; each sample's offsets
  table picks the 3 frames (same rule: ``pipeline.sampling.sample_triplet``), only those 3 JPEGs
  are decoded with PIL, and ``pipeline.torch_views`` makes the views.
- ``mp4``: what existing codebases do: a ``DataLoader`` over the original video files; the
  fastest decoder of ``pipeline.video_decode`` for triplets (PyAV, as measured) seeks to the keyframe before the wanted frames and decodes forward through them (the rule is
  applied to the source's frame count); then the same views.

Both yield the batch dicts of ``pipeline.loader`` (CPU tensors) plus ``decoded`` [B]: frames
decoded to deliver each triplet. One loader epoch is ``cfg.repeat`` passes over the split.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from pipeline.config import PipelineConfig
from pipeline.dataset import Split
from pipeline.loader import seed_for
from pipeline.sampling import sample_triplet
from pipeline.torch_views import TorchViews
from pipeline.video_decode import best_decoder, video_info


def _rng(cfg: PipelineConfig, epoch: int, *words: int) -> np.random.Generator:
    return np.random.default_rng((cfg.seed, epoch, *words))


class ShardTriplets(IterableDataset):
    """Our shards through ``webdataset``: shards split over workers, a shuffle buffer."""

    def __init__(self, split: Split, cfg: PipelineConfig, epoch: int):
        self.split, self.cfg, self.epoch = split, cfg, epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        torch.manual_seed(seed_for(self.cfg.seed, self.epoch, wid, 1))
        rng = _rng(self.cfg, self.epoch, wid)
        urls = worker_tars(self.split, self.cfg, self.epoch, nw)[wid]
        stream = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None,
                                workersplitter=None).shuffle(min(self.cfg.shuffle_buffer, 64), rng=rng_py(rng))
        views = TorchViews(self.cfg)
        labels = {s.key: s.label_id for s in self.split.samples}
        for sample in stream:
            off = np.frombuffer(sample["offsets"], dtype="<i8")
            t = len(off) - 1
            frames = sample_triplet(t, rng, self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
            mj = sample["mjpeg"]
            imgs = [Image.open(io.BytesIO(mj[off[i]:off[i + 1]])).convert("RGB") for i in frames]
            key = sample["__key__"].rsplit("/", 1)[-1]
            yield {**views(*imgs), "frame_idx": torch.tensor(frames), "num_frames": t,
                   "label": labels.get(key, -1), "key": key, "decoded": 3}


def worker_tars(split: Split, cfg: PipelineConfig, epoch: int, workers: int) -> list[list[str]]:
    """The epoch's tars (``cfg.repeat`` seeded permutations) dealt to ``workers`` workers by samples.

    Each tar goes, in order, to the worker with the fewest samples so far (ties: the lowest id),
    so workers end within one tar of each other even when shards differ in size (dealing every
    n-th tar would leave a worker idle once its small tars run out).
    """
    counts = Counter(ref.tar for ref in split.samples)
    order = _rng(cfg, epoch)
    tars = [split.tars[i] for _ in range(cfg.repeat) for i in order.permutation(len(split.tars))]
    dealt: list[list[str]] = [[] for _ in range(workers)]
    load = [0] * workers
    for tar in tars:
        w = min(range(workers), key=lambda k: (load[k], k))
        dealt[w].append(tar)
        load[w] += counts[tar]
    return dealt


def rng_py(rng: np.random.Generator):
    """A ``random.Random`` seeded from a numpy generator (webdataset's shuffle wants one)."""
    import random

    return random.Random(int(rng.integers(2**31)))


class VideoTriplets(Dataset):
    """The split's original videos (``source`` paths under ``root``), one triplet per item."""

    def __init__(self, split: Split, cfg: PipelineConfig, root: str | Path, epoch: int, decoder: str = "auto"):
        self.split, self.cfg, self.root, self.epoch = split, cfg, Path(root), epoch
        self.order = np.concatenate([_rng(cfg, epoch).permutation(len(split.samples)) for _ in range(cfg.repeat)])
        self.frames: dict[int, int] = {}
        self.decode = best_decoder(decoder, "triplets")[1]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        ref = self.split.samples[int(self.order[i])]
        path = self.root / ref.source
        if not path.is_file():
            raise ValueError(f"video {path}: missing (is --root the collection the shards were made from?)")
        sid = int(self.order[i])
        if sid not in self.frames:
            self.frames[sid] = video_info(str(path))[0]
        t = self.frames[sid]
        rng = _rng(self.cfg, self.epoch, i)
        torch.manual_seed(seed_for(self.cfg.seed, self.epoch, i, 2))
        frames = sample_triplet(t, rng, self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
        order = sorted(set(frames))
        pixels, decoded = self.decode(path, order)
        by_idx = {f: Image.fromarray(p.numpy()) for f, p in zip(order, pixels)}
        views = TorchViews(self.cfg)(*(by_idx[f] for f in frames))
        return {**views, "frame_idx": torch.tensor(frames), "num_frames": t, "label": ref.label_id,
                "key": ref.key, "decoded": decoded}


class ReferenceLoader:
    """``iter_epoch`` over a DataLoader of ``ShardTriplets`` (torch) or ``VideoTriplets`` (mp4)."""

    def __init__(self, kind: str, cfg: PipelineConfig, split: Split, *, batch_size: int,
                 num_workers: int, root: str | Path | None = None, decoder: str = "auto"):
        if kind == "mp4" and root is None:
            raise ValueError("the mp4 loader needs the source collection's root directory")
        self.kind, self.cfg, self.split, self.root = kind, cfg, split, root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.batches = len(split.samples) * cfg.repeat // batch_size
        self.decoder = best_decoder(decoder, "triplets")[0] if kind == "mp4" else "PIL"

    def __len__(self) -> int:
        return self.batches

    def iter_epoch(self, epoch: int) -> Iterator[dict]:
        if self.kind == "torch":
            ds = ShardTriplets(self.split, self.cfg, epoch)
        else:
            ds = VideoTriplets(self.split, self.cfg, self.root, epoch, self.decoder)
        dl = DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True,
                        prefetch_factor=2 if self.num_workers else None)
        for b, batch in enumerate(dl):
            if b >= self.batches:
                break
            yield batch
