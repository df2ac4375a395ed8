"""The clip workloads in the DALI graph: host side (which JPEGs, which parameters) and device side.

Host side, as for the triplet workloads (``pipeline.host``), a few batch-level nodes:

- range mode: the parallel ``RangeSource`` reads the N JPEG slots of each sample (its plan's
  ``frames``); ``ClipParamSource`` in the main process draws the same plan (same seeds) and hands
  over its parameters and labels;
- whole mode: ``readers.webdataset`` → ``peek_image_shape`` → one ``python_function``
  (``WholeClipPlan``: frame count from the offsets, frame rate from the JSON metadata, the plan)
  → N ``slice`` nodes cutting the slots' JPEGs out of the ``.mjpeg`` member.

Device side (``clip_outputs``): each slot is decoded once (mixed/GPU or CPU), the slots of a clip
are stacked into a sequence [F,H,W,3], and per clip one ``resize`` (the clip's box, for all its
frames; a flip through the ROI), ``rotate`` (CSTP), colour map, blur and
``crop_mirror_normalize`` to [3,F,S,S]. Clips of one output are stacked, [K,3,F,S,S], except
localglobal's ``global`` (one clip, [3,F,S,S]).
"""

from __future__ import annotations

import json

import numpy as np
from nvidia.dali import fn, types

from pipeline.augment import INTERP, blur, jitter
from pipeline.clip_plan import layout_of, plan_batch
from pipeline.config import PipelineConfig
from pipeline.host import Host
from pipeline.params import BatchClock
from pipeline.range_source import RangeSource

PROBE = (np.array([100]), np.array([128]), np.array([170]), np.array([25.0]))  # a sample to learn the plan's names


def _dali_type(a: np.ndarray):
    return types.INT64 if a.dtype == np.int64 else types.FLOAT


class ClipParamSource:
    """Batch-level ``external_source``: range mode, the batch's plan (without ``frames``, which the
    reader has); whole mode, the batch's key (epoch, batch) for ``WholeClipPlan``."""

    def __init__(self, cfg: PipelineConfig, seed_words: tuple[int, int], clock: BatchClock, batch_size: int,
                 order=None, stats: np.ndarray | None = None):
        self.cfg, self.seed_words, self.clock, self.batch_size = cfg, seed_words, clock, batch_size
        self.order, self.stats = order, stats
        sample = self._draw(0)
        self.names = list(sample)
        self.dtypes = [_dali_type(a) for a in sample.values()]

    def _draw(self, iteration: int) -> dict[str, np.ndarray]:
        epoch, batch = self.clock.at(iteration)
        b = self.batch_size
        if self.order is None:
            return {"key": np.tile(np.array([epoch, batch], dtype=np.int64), (b, 1))}
        st = self.stats[self.order(epoch)[batch * b:(batch + 1) * b]]
        plan = plan_batch(self.cfg, self.seed_words, epoch, batch, st[:, 0], st[:, 1], st[:, 2], st[:, 3])
        plan.pop("frames")
        return plan

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(a) for a in self._draw(info.iteration).values())


def _per_sample(a: np.ndarray) -> list[np.ndarray]:
    """A batch array as DALI's per-sample list (0-d arrays for scalars, not numpy scalars)."""
    return [np.array(x) for x in a]


class WholeClipPlan:
    """Whole mode's ``python_function``: (offsets, frame shape, JSON metadata, key) per sample → per
    slot the JPEG's byte start and length, ``info`` [N + 2] (frames, frame count, -1), and the plan's
    parameters and labels."""

    def __init__(self, cfg: PipelineConfig, seed_words: tuple[int, int]):
        self.cfg, self.seed_words = cfg, seed_words
        self.slots = layout_of(cfg).slots
        probe = plan_batch(cfg, seed_words, 0, 0, *PROBE)
        self.params = [n for n in probe if n != "frames"]
        self.names = [f"{w}{i}" for i in range(self.slots) for w in ("start", "length")] + ["info"] + self.params

    def __call__(self, offsets: list[np.ndarray], shapes: list[np.ndarray], metas: list[np.ndarray],
                 keys: list[np.ndarray]) -> tuple:
        epoch, batch = (int(v) for v in keys[0])
        t = np.array([len(o) - 1 for o in offsets], dtype=np.int64)
        hw = np.array([s[:2] for s in shapes], dtype=np.int64)
        fps = np.array([float(json.loads(np.asarray(m).tobytes()).get("fps") or 0.0) for m in metas])
        plan = plan_batch(self.cfg, self.seed_words, epoch, batch, t, hw[:, 0], hw[:, 1], fps)
        frames = plan["frames"]
        starts = np.stack([o[f] for o, f in zip(offsets, frames)]).astype(np.int64)
        lengths = np.stack([o[f + 1] - o[f] for o, f in zip(offsets, frames)]).astype(np.int64)
        info = np.concatenate([frames, t[:, None], np.full((len(t), 1), -1)], axis=1)
        out = []
        for i in range(self.slots):
            out += [list(starts[:, i:i + 1]), list(lengths[:, i:i + 1])]
        return tuple(out + [list(info)] + [_per_sample(plan[n]) for n in self.params])


def read_clips_whole(cfg: PipelineConfig, inputs, params: ClipParamSource, plan: WholeClipPlan) -> Host:
    """Whole mode's host side for a clip workload (see the module docstring)."""
    mjpeg, offsets, meta = fn.readers.webdataset(
        paths=inputs.files, index_paths=inputs.index_files, ext=["mjpeg", "offsets", "json"],
        dtypes=[types.UINT8, types.INT64, types.UINT8], missing_component_behavior="error",
        random_shuffle=True, initial_fill=inputs.initial_fill, seed=inputs.reader_seed, shard_id=inputs.shard_id,
        num_shards=inputs.num_shards, stick_to_shard=True, dont_use_mmap=not cfg.use_mmap, name="reader")
    key = fn.external_source(source=params, num_outputs=1, batch=True, batch_info=True, dtype=types.INT64)[0]
    planned = dict(zip(plan.names, fn.python_function(offsets, fn.peek_image_shape(mjpeg), meta, key, function=plan,
                                                      num_outputs=len(plan.names), batch_processing=True)))
    jpegs = [fn.slice(mjpeg, planned[f"start{i}"], planned[f"length{i}"], axes=[0], out_of_bounds_policy="error")
             for i in range(plan.slots)]
    return Host(jpegs, planned["info"], meta, {n: planned[n] for n in plan.params})


def read_clips_range(source: RangeSource, params: ClipParamSource) -> Host:
    """Range mode's host side for a clip workload: slots from the parallel reader, the plan from the
    batch source."""
    outs = fn.external_source(source=source, num_outputs=len(source.names), batch=True, parallel=True,
                              batch_info=True, dtype=source.dtypes, prefetch_queue_depth=source.prefetch)
    p = dict(zip(params.names, fn.external_source(source=params, num_outputs=len(params.names), batch=True,
                                                  batch_info=True, dtype=params.dtypes)))
    return Host(list(outs[:-1]), outs[-1], None, p)


def clip_view(seq, params: dict, k: int, size: int, cfg: PipelineConfig, out_dtype):
    """Clip k of the plan from its decoded sequence [F,H,W,3]: [3,F,size,size]."""
    v = fn.resize(seq, size=[size, size], roi_start=params[f"roi_start/{k}"], roi_end=params[f"roi_end/{k}"],
                  roi_relative=True, interp_type=INTERP[cfg.clip_interp], antialias=True)
    if f"angle/{k}" in params:
        v = fn.rotate(v, angle=params[f"angle/{k}"], keep_size=True, fill_value=0, interp_type=types.INTERP_LINEAR)
    if f"colour/{k}" in params:
        v = jitter(v, params[f"colour/{k}"], params[f"offset/{k}"], cfg.contrast_pivot)
    if f"blur_rows/{k}" in params:
        v = blur(v, params[f"blur_rows/{k}"], params[f"blur_cols/{k}"])
    return fn.crop_mirror_normalize(v, mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std],
                                    output_layout="CFHW", dtype=out_dtype)


def clip_outputs(host: Host, cfg: PipelineConfig, decoder_device: str, out_dtype, **decoder_kwargs) -> list:
    """The workload's clip outputs (``layout_of(cfg).outputs`` order) then its labels."""
    lay = layout_of(cfg)
    imgs = [fn.decoders.image(j, device=decoder_device, output_type=types.RGB, **decoder_kwargs) for j in host.jpegs]
    seqs: dict[tuple[int, ...], object] = {}
    for slots in lay.clips:
        if slots not in seqs:
            seqs[slots] = fn.stack(*[imgs[i] for i in slots], axis_name="F")
    clips = [clip_view(seqs[s], host.params, k, lay.sizes[k], cfg, out_dtype) for k, s in enumerate(lay.clips)]
    outs = [clips[ks[0]] if name == "global" else fn.stack(*[clips[k] for k in ks])
            for name, ks in lay.outputs.items()]
    return outs + [host.params[n] for n in lay.labels]
