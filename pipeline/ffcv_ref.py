"""The FFCV peer (optional extra ``ffcv``): pre-sampled triplets loaded by FFCV's own decoders.

FFCV cannot choose frames at load time, so ``write_triplets`` draws triplets from our shards
with the same rule (``draws`` per clip, seeded) and writes them to a ``.beton`` as three JPEG
image fields (FFCV re-encodes them at ``jpeg_quality``) plus the label. ``FfcvLoader`` reads
them with ``RandomResizedCropRGBImageDecoder`` and ``NormalizeImage``: the ``simple`` workload
(one random-resized crop per frame). Import errors name the missing extra.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import PipelineConfig
from pipeline.dataset import Split
from pipeline.sampling import sample_triplet


def require_ffcv():
    """Import ffcv or raise ImportError saying how to get it."""
    try:
        import ffcv  # noqa: F401
    except Exception as exc:  # ffcv fails with ImportError, or OSError on a missing libturbojpeg
        raise ImportError(f"the ffcv loader needs the optional extra: apt-get install -y libopencv-dev "
                          f"libturbojpeg0-dev && pip install ffcv==1.0.2 ({exc})") from None


class _Triplets:
    """Indexed dataset for FFCV's writer: (past, current, future, label) as HWC uint8 arrays."""

    def __init__(self, split: Split, cfg: PipelineConfig, draws: int):
        self.split, self.cfg, self.draws = split, cfg, draws

    def __len__(self) -> int:
        return len(self.split.samples) * self.draws

    def __getitem__(self, i: int):
        ref = self.split.samples[i % len(self.split.samples)]
        frames = sample_triplet(ref.num_frames, np.random.default_rng((self.cfg.seed, i)),
                                self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
        fd = os.open(ref.tar, os.O_RDONLY)
        try:
            imgs = []
            for f in frames:
                start, end = np.frombuffer(os.pread(fd, 16, ref.offsets_offset + 8 * f), dtype="<i8")
                data = os.pread(fd, int(end - start), ref.mjpeg_offset + int(start))
                imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        finally:
            os.close(fd)
        return (*imgs, ref.label_id)


def write_triplets(split: Split, cfg: PipelineConfig, path: str | Path, draws: int = 1,
                   jpeg_quality: int = 90, workers: int = 0) -> Path:
    """Write ``draws`` pre-sampled triplets per clip to an FFCV ``.beton`` at ``path``."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {name: RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality) for name in ("past", "current", "future")}
    writer = DatasetWriter(str(path), {**fields, "label": IntField()}, num_workers=workers or (os.cpu_count() or 1))
    writer.from_indexed_dataset(_Triplets(split, cfg, draws))
    return Path(path)


class FfcvLoader:
    """FFCV's Loader over a triplet ``.beton``; yields the ``simple`` workload's batch dicts."""

    def __init__(self, path: str | Path, cfg: PipelineConfig, *, batch_size: int, num_workers: int):
        require_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import NormalizeImage, ToTensor, ToTorchImage

        mean, std = np.array(cfg.mean) * 255, np.array(cfg.std) * 255
        size = (cfg.global_size, cfg.global_size)

        def image_pipe():
            return [RandomResizedCropRGBImageDecoder(size, scale=cfg.global_scale, ratio=cfg.ratio),
                    NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]

        pipes = {"past": image_pipe(), "current": image_pipe(), "future": image_pipe(),
                 "label": [IntDecoder(), ToTensor()]}
        self.cfg, self.batch_size = cfg, batch_size
        self.loader = Loader(str(path), batch_size=batch_size, num_workers=num_workers, order=OrderOption.RANDOM,
                             drop_last=True, pipelines=pipes, seed=cfg.seed, os_cache=True)

    def __len__(self) -> int:
        return len(self.loader)

    def iter_epoch(self, epoch: int) -> Iterator[dict]:
        for past, cur, fut, label in self.loader:
            yield {"current_global": cur[:, None], "past": past[:, None], "future": fut[:, None],
                   "label": label.view(-1).to(torch.int64), "decoded": torch.full((len(label),), 3)}
