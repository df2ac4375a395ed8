"""The DALI graph: shards → frame ids → JPEG byte slices → decode → T-CoRe views or clips.

``make_pipeline`` is the one place that turns a device string into DALI placement: ``"gpu"``
decodes with ``fn.decoders.image(device="mixed")`` (nvJPEG, and the hardware JPEG decoder of
A100/H100 for ``hw_decoder_load`` of the images) and runs the device side on the GPU; ``"cpu"``
runs everything on the CPU; ``"host"`` builds only the host side (``pipeline.host``: what a GPU
run keeps on the CPU) on the CPU and returns its outputs, for measuring it.

Outputs, per sample, in ``output_names(cfg)`` order: ``current_global`` [G,3,H,W],
``current_local`` [L,3,h,w] (only when L > 0 in the tcore workload), ``past`` and ``future``
[2,3,H,W] (tcore) or [1,3,H,W] (simple), ``info`` [5] int64 (past, current, future frame
index, frame count, sample id; -1 in whole mode), in whole mode ``meta`` (the sample's JSON
bytes), in range mode ``bad`` [k,3] int64 (the bad samples replaced, ``pipeline.integrity``), and with ``raw_size`` > 0 ``raw`` [3,S,S,3] uint8: the decoded frames' top-left
corners, un-augmented.

Clip workloads (``dualvar``, ``cstp``, ``localglobal``; ``pipeline.clip_views``): the clip
outputs and labels of ``pipeline.clip_plan.layout_of(cfg)``, then ``info`` [N + 2] int64 (the N
slots' frames, frame count, sample id or -1) and in whole mode ``meta`` (no ``bad``: range mode
checks a clip's frames too, but a bad sample stops the run, see ``pipeline.range_source``). The workload picks its
host side in ``host_side`` and its device side from ``DEVICE_SIDES``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from nvidia.dali import fn, pipeline_def, types

from pipeline.augment import simple_view, tcore_views
from pipeline.clip_plan import CLIP_WORKLOADS, layout_of
from pipeline.clip_views import (
    ClipParamSource,
    WholeClipPlan,
    clip_outputs,
    read_clips_range,
    read_clips_whole,
)
from pipeline.config import PipelineConfig
from pipeline.host import Host, ParamSource, WholePlan, read_range, read_whole
from pipeline.range_source import RangeSource

OUT_DTYPES = {"float32": types.FLOAT, "bfloat16": types.FLOAT, "float16": types.FLOAT16}
DEVICES = ("gpu", "cpu", "host")


@dataclass
class GraphInputs:
    """What one rank's graph reads: range mode's source, or whole mode's shard lists, reader
    settings, parameter source and plan function."""

    source: RangeSource | None = None
    params: ParamSource | ClipParamSource | None = None
    files: list[str] | None = None
    index_files: list[str] | None = None
    shard_id: int = 0
    num_shards: int = 1
    reader_seed: int = 0
    initial_fill: int = 1
    plan: WholePlan | WholeClipPlan | None = None


def output_names(cfg: PipelineConfig) -> list[str]:
    """Names of the pipeline's outputs, in order."""
    if cfg.workload in CLIP_WORKLOADS:
        lay = layout_of(cfg)
        return [*lay.outputs, *lay.labels, "info"] + (["meta"] if cfg.read_mode == "whole" else [])
    names = ["current_global"]
    if cfg.workload == "tcore" and cfg.num_local > 0:
        names.append("current_local")
    names += ["past", "future", "info"] + (["meta"] if cfg.read_mode == "whole" else ["bad"])
    return names + (["raw"] if cfg.raw_size else [])


def host_output_names(cfg: PipelineConfig, inputs: GraphInputs) -> list[str]:
    """Names of a ``"host"`` pipeline's outputs, in order."""
    if cfg.workload in CLIP_WORKLOADS:
        raise ValueError(f"pipeline device 'host' (host side only) is not available for the clip workload {cfg.workload}")
    if inputs.source is not None:
        params = inputs.params.names
    else:
        params = inputs.params.names[1:] + inputs.plan.names[7:]
    return ["jpeg_past", "jpeg_current", "jpeg_future", "info", "meta" if inputs.source is None else "bad"] + params


def host_side(cfg: PipelineConfig, inputs: GraphInputs) -> Host:
    if cfg.workload in CLIP_WORKLOADS:
        if inputs.source is not None:
            return read_clips_range(inputs.source, inputs.params)
        return read_clips_whole(cfg, inputs, inputs.params, inputs.plan)
    if inputs.source is not None:
        return read_range(inputs.source, inputs.params)
    return read_whole(cfg, inputs.files, inputs.index_files, inputs.shard_id, inputs.num_shards,
                      inputs.reader_seed, inputs.initial_fill, inputs.params, inputs.plan)


def tcore_side(host: Host, cfg: PipelineConfig, decoder_device: str, out_dtype, dec_kwargs: dict) -> tuple[list, list]:
    """T-CoRe's views (before ``info``) and the debug ``raw`` frames (after it)."""
    imgs = [fn.decoders.image(j, device=decoder_device, output_type=types.RGB, **dec_kwargs) for j in host.jpegs]
    cur_global, cur_local, past, fut = tcore_views(imgs, host.params, cfg, out_dtype)
    raw = []
    if cfg.raw_size:
        raw = [fn.stack(*[fn.crop(im, crop=[cfg.raw_size] * 2, crop_pos_x=0.0, crop_pos_y=0.0,
                                  out_of_bounds_policy="pad") for im in imgs])]
    return [cur_global] + ([cur_local] if cur_local is not None else []) + [past, fut], raw


def simple_side(host: Host, cfg: PipelineConfig, decoder_device: str, out_dtype, dec_kwargs: dict) -> tuple[list, list]:
    """One crop of each frame: current, past, future."""
    return [simple_view(host.jpegs[i], v, host.params, decoder_device, cfg, out_dtype, **dec_kwargs)
            for i, v in ((1, "current"), (0, "past"), (2, "future"))], []


def clip_side(host: Host, cfg: PipelineConfig, decoder_device: str, out_dtype, dec_kwargs: dict) -> tuple[list, list]:
    """A clip workload's clips and labels (``pipeline.clip_views``)."""
    return clip_outputs(host, cfg, decoder_device, out_dtype, **dec_kwargs), []


# the device side of each workload: (outputs before info/meta, outputs after them)
DEVICE_SIDES = {"tcore": tcore_side, "simple": simple_side, "dualvar": clip_side, "cstp": clip_side,
                "localglobal": clip_side}


@pipeline_def
def triplet_graph(cfg: PipelineConfig, device: str, inputs: GraphInputs):
    """The whole graph for one rank (or only its host side); see the module docstring."""
    host = host_side(cfg, inputs)
    if device == "host":
        side = host.meta if host.meta is not None else host.bad
        return (*host.jpegs, host.info, side, *[host.params[n] for n in host_output_names(cfg, inputs)[5:]])
    decoder_device = "mixed" if device == "gpu" else "cpu"
    dec_kwargs = {"hw_decoder_load": cfg.hw_decoder_load} if device == "gpu" else {}
    side = host.meta if host.meta is not None else host.bad  # whole mode: meta; range mode: bad (triplets)
    tail = (host.info,) + ((side,) if side is not None else ())
    views, extra = DEVICE_SIDES[cfg.workload](host, cfg, decoder_device, OUT_DTYPES[cfg.dtype], dec_kwargs)
    return (*views, *tail, *extra)


def make_pipeline(cfg: PipelineConfig, device: str, device_id: int | None, *, batch_size: int,
                  inputs: GraphInputs, seed: int):
    """Build the graph for ``device`` ("gpu", "cpu" or "host") over ``inputs``."""
    if device not in DEVICES:
        raise ValueError(f"pipeline device must be one of {DEVICES}, got {device!r}")
    if cfg.raw_size and cfg.workload != "tcore":
        raise ValueError("pipeline.raw_size needs pipeline.workload=tcore")
    extra = {}
    if inputs.source is not None:
        extra = {"py_num_workers": cfg.range_workers,
                 "py_start_method": "spawn" if device == "gpu" else "fork"}
    pipe = triplet_graph(cfg, device, inputs, batch_size=batch_size, num_threads=cfg.num_threads,
                         device_id=device_id if device == "gpu" else None, seed=seed,
                         prefetch_queue_depth=cfg.prefetch, exec_dynamic=True, **extra)
    if extra.get("py_start_method") != "fork":
        pipe.build()
        return pipe
    # build() forks the range readers: a forked child must never garbage-collect the parent's DALI
    # pipelines (their threads do not exist there; collecting one crashes the reader), so collect
    # what is garbage now and keep the rest out of the children's collections
    gc.collect()
    gc.freeze()
    try:
        pipe.build()
    finally:
        gc.unfreeze()
    return pipe
