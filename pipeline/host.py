"""The graph's host side: every node the GPU graph runs on the CPU, and nothing else.

In GPU mode DALI runs CPU operators one at a time, each costing ~0.1 ms per batch however
small, and a parallel per-sample source pays its dispatch per sample, so the host side is a
handful of nodes that each do a whole batch's work with numpy:

- range mode (the GPU presets'): one parallel, batch-level ``external_source``
  (``pipeline.range_source.RangeSource``: in worker processes, the batch's frames and their
  bytes, read with ``pread``) and one batch-level ``external_source`` in the main process
  (``ParamSource``: every view parameter, crop windows included, since the epoch's order says
  which samples, hence which frame sizes, a batch holds);
- whole mode: ``readers.webdataset`` → ``peek_image_shape`` of the clip's first JPEG (its frames
  share one size) → one ``python_function`` (``WholePlan``: the batch's frames and crop windows)
  → three ``slice`` nodes cutting the chosen JPEGs; plus ``ParamSource`` with the photometric
  parameters.

``read_range`` / ``read_whole`` return what the device side consumes (``Host``): three JPEG byte
strings, the bookkeeping ``info`` (past, current and future frame, frame count, sample id, -1
in whole mode), whole mode's JSON metadata and the parameter nodes (names from
``pipeline.params``). A CPU-only pipeline returning exactly these (``make profile
LOADERS=dali-host``) measures what a GPU run costs its host.

Randomness comes from numpy generators seeded by (seed, rank, epoch, batch index, purpose), so a
batch is the same whether its pipeline was built at the start of the epoch, several epochs
earlier, or at a resume point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, types

from pipeline.config import PipelineConfig
from pipeline.params import (
    CROPS,
    FRAMES,
    BatchClock,
    batch_params,
    batch_rng,
    crop_rois,
    layout,
    roi_names,
    split_rois,
)
from pipeline.range_source import RangeSource
from pipeline.sampling import triplets


class ParamSource:
    """Batch-level ``external_source`` with the batch's view parameters: photometric ones, and the
    crop windows in range mode (``order`` and the frame ``sizes`` [N, 2] say which samples the
    batch holds) or the batch's key (epoch, batch index) for ``WholePlan`` in whole mode.

    Parameters are drawn for ``CHUNK`` consecutive batches of an epoch at once (numpy's cost per
    call, not per element, dominates at these sizes), seeded by (seed, rank, epoch, chunk), and
    handed out a batch at a time.
    """

    CHUNK = 8

    def __init__(self, cfg: PipelineConfig, seed_words: tuple[int, int], clock: BatchClock, batch_size: int,
                 order=None, sizes: np.ndarray | None = None):
        self.cfg, self.seed_words, self.clock, self.batch_size = cfg, seed_words, clock, batch_size
        self.order, self.sizes = order, sizes
        self._cached: tuple[tuple[int, int], dict[str, np.ndarray]] | None = None
        sample = self._draw(0)
        self.names = list(sample)
        self.layouts = [layout(n, a) for n, a in sample.items()]
        self.dtypes = [types.INT64 if a.dtype == np.int64 else types.FLOAT for a in sample.values()]

    def _chunk(self, epoch: int, k: int) -> dict[str, np.ndarray]:
        """Parameter arrays of batches k·CHUNK .. of ``epoch``, rows batch after batch."""
        if self._cached is None or self._cached[0] != (epoch, k):
            b, first = self.batch_size, k * self.CHUNK
            rows = b * min(self.CHUNK, self.clock.batches_per_epoch - first)
            sizes = None if self.order is None else self.sizes[self.order(epoch)[first * b:first * b + rows]]
            self._cached = (epoch, k), batch_params(self.cfg, self.seed_words, epoch, k, rows, sizes)
        return self._cached[1]

    def _draw(self, iteration: int) -> dict[str, np.ndarray]:
        epoch, batch = self.clock.at(iteration)
        b = self.batch_size
        k, pos = divmod(batch, self.CHUNK)
        out = {n: a[pos * b:(pos + 1) * b] for n, a in self._chunk(epoch, k).items()}
        if self.order is None:
            out = {"key": np.tile(np.array([epoch, batch], dtype=np.int64), (b, 1))} | out
        return out

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(a) for a in self._draw(info.iteration).values())


class WholePlan:
    """Whole mode's ``python_function``: (offsets, frame shape, key) per sample → per sample the 3
    frames' byte start and length, ``info`` [5] (frames, frame count, -1), and the crop windows."""

    def __init__(self, cfg: PipelineConfig, seed_words: tuple[int, int]):
        self.cfg, self.seed_words = cfg, seed_words
        self.names = [f"{w}{i}" for i in range(3) for w in ("start", "length")] + ["info"]
        self.names += roi_names(cfg)

    def __call__(self, offsets: list[np.ndarray], shapes: list[np.ndarray], keys: list[np.ndarray]) -> tuple:
        epoch, batch = (int(v) for v in keys[0])
        t = np.array([len(o) - 1 for o in offsets], dtype=np.int64)
        u = batch_rng(self.seed_words, epoch, batch, FRAMES).random((len(t), 3))
        frames = triplets(t, u, self.cfg.sampling, self.cfg.gap_min, self.cfg.gap_max)
        cuts = np.array([[o[f], o[f + 1] - o[f]] for o, fr in zip(offsets, frames) for f in fr], dtype=np.int64)
        cuts = cuts.reshape(len(t), 3, 2)
        hw = np.array([s[:2] for s in shapes], dtype=np.int64)
        rois = split_rois(crop_rois(batch_rng(self.seed_words, epoch, batch, CROPS), hw[:, 0], hw[:, 1], self.cfg))
        info = np.concatenate([frames, t[:, None], np.full((len(t), 1), -1)], axis=1)
        out = [list(cuts[:, i, j:j + 1]) for i in range(3) for j in range(2)] + [list(info)]
        return tuple(out + [list(rois[n]) for n in self.names[7:]])


@dataclass
class Host:
    """The host side's outputs: what the device side consumes."""

    jpegs: list  # past, current, future: encoded bytes
    info: object  # int64 [5]: past, current, future frame, frame count, sample id (-1 in whole mode)
    meta: object  # whole mode: the sample's JSON bytes; range mode: None
    params: dict  # name -> node, names as in pipeline.params
    bad: object = None  # range mode: [k, 3] int64 per sample, the bad samples replaced (pipeline.integrity)


def read_whole(cfg: PipelineConfig, files: list[str], index_files: list[str], shard_id: int, num_shards: int,
               reader_seed: int, initial_fill: int, params: ParamSource, plan: WholePlan) -> Host:
    """Whole mode's host side (see the module docstring)."""
    # stick_to_shard: every pass (cfg.repeat, read-ahead past the epoch) stays within this rank's part
    mjpeg, offsets, meta = fn.readers.webdataset(
        paths=files, index_paths=index_files, ext=["mjpeg", "offsets", "json"],
        dtypes=[types.UINT8, types.INT64, types.UINT8], missing_component_behavior="error",
        random_shuffle=True, initial_fill=initial_fill, seed=reader_seed, shard_id=shard_id,
        num_shards=num_shards, stick_to_shard=True, dont_use_mmap=not cfg.use_mmap, name="reader")
    p = dict(zip(params.names, fn.external_source(source=params, num_outputs=len(params.names), batch=True,
                                                  batch_info=True, dtype=params.dtypes, layout=params.layouts)))
    shape = fn.peek_image_shape(mjpeg)
    planned = dict(zip(plan.names, fn.python_function(offsets, shape, p.pop("key"), function=plan,
                                                      num_outputs=len(plan.names), batch_processing=True)))
    jpegs = [fn.slice(mjpeg, planned[f"start{i}"], planned[f"length{i}"], axes=[0], out_of_bounds_policy="error")
             for i in range(3)]
    p.update({n: planned[n] for n in plan.names[7:]})
    return Host(jpegs, planned["info"], meta, p)


def read_range(source: RangeSource, params: ParamSource) -> Host:
    """Range mode's host side: bytes and bookkeeping from the parallel reader, parameters from the
    batch source."""
    past, cur, fut, info, bad = fn.external_source(
        source=source, num_outputs=len(source.names), batch=True, parallel=True, batch_info=True,
        dtype=source.dtypes, prefetch_queue_depth=source.prefetch)
    p = dict(zip(params.names, fn.external_source(source=params, num_outputs=len(params.names), batch=True,
                                                  batch_info=True, dtype=params.dtypes, layout=params.layouts)))
    return Host([past, cur, fut], info, None, p, bad)
