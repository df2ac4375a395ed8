"""Test clips for action evaluation through DALI: the GPU path of feature extraction.

Shapes: clips ``[N, 3, T, crop, crop]`` float32, ImageNet-normalised, on the reader's device.

The same clips as ``evaluation.clip_source.ShardClipSource.test_batches`` (``num_clips`` uniformly
spaced clips of ``clip_len`` frames per video, every frame resized to ``resize``, centre crop): the
host reads each video's JPEGs from its shard and keeps the frames its clips need, each once; one
``@pipeline_def`` graph decodes them (``device="gpu"``: nvJPEG through the mixed decoder, with the
A100/H100 hardware decoder taking ``hw_decoder_load`` of them; ``"cpu"``: libjpeg-turbo),
resizes the centre-crop region straight to ``crop``² (bicubic, antialiased) and normalises; torch
then gathers the decoded frames into clips on the device. Resizing the region that the centre crop
keeps samples at exactly the positions of "resize the frame, then crop", so the two readers
differ only by their resampling filters and JPEG decoders (``tests/test_dali_clips.py`` bounds it).

This graph is separate from the training graph (``pipeline.graph``) on purpose: training reads
an endless, shuffled stream of a split; evaluation reads a given list of videos once, in order,
with a short last batch.

Training clips (fine-tuning) come from ``ShardClipSource``: their random crop, flip and colour
jitter follow torchvision's order of operations, which the test clips do not need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from evaluation.action_config import ClipConfig
from evaluation.action_data import Video, uniform_clips
from evaluation.clip_source import ShardClipSource
from evaluation.knn import MEAN, STD


def centre_roi(cfg: ClipConfig) -> tuple[list[float], list[float]]:
    """Relative (y, x) start and end of the region of a frame that "resize to ``cfg.resize``, then
    centre-crop ``cfg.crop``" keeps (the same rounding as ``ShardClipSource``)."""
    (h, w), c = cfg.resize, cfg.crop
    y0, x0 = int(round((h - c) / 2)), int(round((w - c) / 2))
    return [y0 / h, x0 / w], [(y0 + c) / h, (x0 + c) / w]


@pipeline_def
def eval_frame_graph(cfg: ClipConfig, device: str, hw_decoder_load: float):
    """JPEG bytes (one frame per sample) -> the frame's centre crop [3, crop, crop], normalised."""
    jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
    kwargs = {"hw_decoder_load": hw_decoder_load} if device == "gpu" else {}
    img = fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, **kwargs)
    start, end = centre_roi(cfg)
    img = fn.resize(img, size=[cfg.crop, cfg.crop], roi_start=start, roi_end=end, roi_relative=True,
                    interp_type=types.INTERP_CUBIC, antialias=True)
    return fn.crop_mirror_normalize(img, mean=[255.0 * m for m in MEAN], std=[255.0 * s for s in STD],
                                    output_layout="CHW", dtype=types.FLOAT)


def read_chunk(videos: Sequence[Video], cfg: ClipConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """The JPEGs of the frames the videos' test clips use (each frame once) and, per clip, the
    positions of its frames in that list: ``[len(videos) * num_clips, clip_len]``."""
    jpegs: list[np.ndarray] = []
    index = []
    for v in videos:
        idx = uniform_clips(v.num_frames, cfg.clip_len, cfg.stride, cfg.num_clips)
        frames, inverse = np.unique(idx, return_inverse=True)
        stored = v.ref.frame_jpegs()
        if len(stored) != v.num_frames:
            raise ValueError(f"{v.ref.tar}: sample {v.key} has {len(stored)} frames, the manifest says {v.num_frames}")
        index.append(inverse.reshape(idx.shape) + len(jpegs))
        jpegs += [np.frombuffer(stored[i], dtype=np.uint8) for i in frames.tolist()]
    return jpegs, np.concatenate(index).astype(np.int64)


class DaliClipSource:
    """``ClipSource`` whose test clips come from ``eval_frame_graph`` on ``device`` (cpu or cuda:N);
    its training clips from ``ShardClipSource``. The next batch's JPEGs are read while the current
    one decodes."""

    def __init__(self, cfg: ClipConfig, device: torch.device, workers: int = 2, hw_decoder_load: float = 0.65):
        self.cfg, self.device, self.workers, self.hw_decoder_load = cfg, device, workers, hw_decoder_load
        self.cpu_source = ShardClipSource(cfg, workers)
        self.reader = ThreadPoolExecutor(1)
        self._built: tuple[int, object] | None = None  # (frames per run, the graph built for it)

    def _pipe(self, max_frames: int):
        """A built graph that takes up to ``max_frames`` frames per run (rebuilt when that changes)."""
        if self._built is None or self._built[0] != max_frames:
            gpu = self.device.type == "cuda"
            pipe = eval_frame_graph(self.cfg, "gpu" if gpu else "cpu", self.hw_decoder_load, batch_size=max_frames,
                                    num_threads=self.workers, device_id=(self.device.index or 0) if gpu else None,
                                    seed=0, prefetch_queue_depth=1, exec_dynamic=True)
            pipe.build()
            self._built = (max_frames, pipe)
        return self._built[1]

    def _decode(self, pipe, jpegs: list[np.ndarray], index: np.ndarray) -> torch.Tensor:
        pipe.feed_input("jpegs", jpegs)
        if self.device.type == "cuda":
            (out,) = pipe.run(cuda_stream=torch.cuda.current_stream(self.device))
        else:
            (out,) = pipe.run()
        frames = torch.from_dlpack(out.as_tensor())  # [F, 3, crop, crop] on the device
        clips = frames[torch.as_tensor(index, device=frames.device)]  # [N, T, 3, crop, crop], a copy
        return clips.permute(0, 2, 1, 3, 4).contiguous()

    def test_batches(self, videos: Sequence[Video], batch_videos: int) -> Iterator[tuple[list[Video], torch.Tensor]]:
        chunks = [list(videos[i:i + batch_videos]) for i in range(0, len(videos), batch_videos)]
        if not chunks:
            return
        pipe = self._pipe(batch_videos * self.cfg.num_clips * self.cfg.clip_len)
        pending = self.reader.submit(read_chunk, chunks[0], self.cfg)
        for k, chunk in enumerate(chunks):
            jpegs, index = pending.result()
            if k + 1 < len(chunks):
                pending = self.reader.submit(read_chunk, chunks[k + 1], self.cfg)
            yield chunk, self._decode(pipe, jpegs, index)

    def train_batches(self, videos: Sequence[Video], batch_size: int, epoch: int, seed: int,
                      skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.cpu_source.train_batches(videos, batch_size, epoch, seed, skip)


def bench(shards: str, device: torch.device, repeats: int = 3, batch_videos: int = 4) -> dict[str, float]:
    """Median seconds to make every test clip of the split-1 videos, per reader (no model)."""
    import statistics
    import time

    from evaluation.action_data import ActionShards

    sh = ActionShards(shards)
    videos = sh.videos(1, "train")[0] + sh.videos(1, "test")[0]
    cfg = ClipConfig()
    out = {}
    for name, source in (("pil", ShardClipSource(cfg)), ("dali", DaliClipSource(cfg, device))):
        times = []
        for _ in range(repeats + 1):  # the first pass warms caches and builds the graph
            t0 = time.perf_counter()
            for _, clips in source.test_batches(videos, batch_videos):
                if clips.is_cuda:
                    torch.cuda.synchronize(clips.device)
            times.append(time.perf_counter() - t0)
        out[f"{name}_s"] = statistics.median(times[1:])
    out["videos"] = len(videos)
    out["pil_over_dali"] = out["pil_s"] / out["dali_s"]
    return out


if __name__ == "__main__":
    import argparse

    from model.device import resolve_device

    ap = argparse.ArgumentParser(description="Time the PIL and DALI test-clip readers on UCF101/HMDB51 shards.")
    ap.add_argument("shards")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    res = bench(args.shards, resolve_device(args.device), args.repeats)
    print(f"{res['videos']} videos x 10 clips x 16 frames at 112x112: PIL {res['pil_s']:.2f} s, "
          f"DALI {res['dali_s']:.2f} s (median of {args.repeats}); PIL / DALI = {res['pil_over_dali']:.2f}")
