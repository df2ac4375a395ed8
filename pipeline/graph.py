"""The DALI graph: shards → 3 frame ids → 3 JPEG byte slices → decode → T-CoRe views.

``make_pipeline`` is the one place that turns a device string into DALI placement: ``"gpu"``
decodes with ``fn.decoders.image(device="mixed")`` (nvJPEG, and the hardware JPEG decoder of
A100/H100 for ``hw_decoder_load`` of the images) and augments on the GPU; ``"cpu"`` decodes
with libjpeg-turbo and augments on the CPU. Per-sample integer work (frame choice, byte ranges,
crop geometry) stays on the CPU in both cases, as DALI argument inputs must.

Outputs, per sample, in ``output_names(cfg)`` order: ``current_global`` [G,3,H,W],
``current_local`` [L,3,h,w] (only when L > 0 in the tcore workload), ``past`` and ``future``
[2,3,H,W] (tcore) or [1,3,H,W] (simple), ``frame_idx`` [3] int64, ``num_frames`` [] int64,
``meta`` (the sample's JSON bytes in whole mode, its sample id in range mode), and with
``raw_size`` > 0 ``raw`` [3,S,S,3] uint8: the decoded frames' top-left corners, un-augmented.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from pipeline.augment import simple_view, tcore_views
from pipeline.config import PipelineConfig
from pipeline.range_source import RangeSource
from pipeline.sampling import graph_triplet

OUT_DTYPES = {"float32": types.FLOAT, "bfloat16": types.FLOAT, "float16": types.FLOAT16}


def output_names(cfg: PipelineConfig) -> list[str]:
    """Names of the pipeline's outputs, in order."""
    names = ["current_global"]
    if cfg.workload == "tcore" and cfg.num_local > 0:
        names.append("current_local")
    names += ["past", "future", "frame_idx", "num_frames", "meta"]
    return names + (["raw"] if cfg.raw_size else [])


def _cut(mjpeg, offsets, i):
    """The bytes of frame ``i``: mjpeg[offsets[i]:offsets[i+1]] (start and shape both INT64)."""
    start = offsets[i]
    return fn.slice(mjpeg, fn.reshape(start, shape=[1]), fn.reshape(offsets[i + 1] - start, shape=[1]),
                    axes=[0], out_of_bounds_policy="error")


def _read_whole(cfg: PipelineConfig, files, index_files, shard_id: int, num_shards: int,
                seed: int, initial_fill: int):
    mjpeg, offsets, meta = fn.readers.webdataset(
        paths=files, index_paths=index_files, ext=["mjpeg", "offsets", "json"],
        dtypes=[types.UINT8, types.INT64, types.UINT8], missing_component_behavior="error",
        random_shuffle=True, initial_fill=initial_fill, seed=seed, shard_id=shard_id,
        num_shards=num_shards, dont_use_mmap=not cfg.use_mmap, name="reader")
    t = offsets.shape(dtype=types.INT64)[0] - 1
    frames = graph_triplet(t, cfg.sampling, cfg.gap_min, cfg.gap_max)
    jpegs = [_cut(mjpeg, offsets, i) for i in frames]
    return jpegs, fn.stack(*frames), t, meta


def _read_range(source: RangeSource):
    past, cur, fut, frame_idx, t, sid = fn.external_source(
        source=source, num_outputs=6, batch=False, parallel=True,
        dtype=[types.UINT8, types.UINT8, types.UINT8, types.INT64, types.INT64, types.INT64])
    return [past, cur, fut], frame_idx, t, sid


@pipeline_def
def triplet_graph(cfg: PipelineConfig, device: str, files: list[str], index_files: list[str],
                  shard_id: int, num_shards: int, reader_seed: int, initial_fill: int,
                  source: RangeSource | None):
    """The whole graph for one rank (``shard_id`` of ``num_shards``); see the module docstring."""
    if source is None:
        jpegs, frame_idx, t, meta = _read_whole(cfg, files, index_files, shard_id, num_shards,
                                                reader_seed, initial_fill)
    else:
        jpegs, frame_idx, t, meta = _read_range(source)
    decoder_device = "mixed" if device == "gpu" else "cpu"
    dec_kwargs = {"hw_decoder_load": cfg.hw_decoder_load} if device == "gpu" else {}
    out_dtype = OUT_DTYPES[cfg.dtype]
    if cfg.workload == "simple":
        cur, past, fut = (simple_view(j, decoder_device, cfg, out_dtype, **dec_kwargs) for j in
                          (jpegs[1], jpegs[0], jpegs[2]))
        return cur, past, fut, frame_idx, t, meta
    imgs = [fn.decoders.image(j, device=decoder_device, output_type=types.RGB, **dec_kwargs) for j in jpegs]
    shapes = [fn.peek_image_shape(jpegs[0]), None, fn.peek_image_shape(jpegs[2])]  # the centred crops' frames
    cur_global, cur_local, past, fut = tcore_views(imgs, shapes, cfg, out_dtype)
    outs = [cur_global] + ([cur_local] if cur_local is not None else []) + [past, fut, frame_idx, t, meta]
    if cfg.raw_size:
        raw = [fn.crop(im, crop=[cfg.raw_size] * 2, crop_pos_x=0.0, crop_pos_y=0.0,
                       out_of_bounds_policy="pad") for im in imgs]
        outs.append(fn.stack(*raw))
    return tuple(outs)


def make_pipeline(cfg: PipelineConfig, device: str, device_id: int | None, *, batch_size: int,
                  files: list[str], index_files: list[str], shard_id: int, num_shards: int,
                  seed: int, initial_fill: int, source: RangeSource | None = None):
    """Build the graph for ``device`` ("gpu" or "cpu"), one shard of the data and a seed."""
    if device not in ("gpu", "cpu"):
        raise ValueError(f"pipeline device must be 'gpu' or 'cpu', got {device!r}")
    if cfg.raw_size and cfg.workload != "tcore":
        raise ValueError("pipeline.raw_size needs pipeline.workload=tcore")
    extra = {}
    if source is not None:
        extra = {"py_num_workers": cfg.range_workers,
                 "py_start_method": "spawn" if device == "gpu" else "fork"}
    pipe = triplet_graph(cfg, device, files, index_files, shard_id, num_shards, seed, initial_fill, source,
                         batch_size=batch_size, num_threads=cfg.num_threads,
                         device_id=device_id if device == "gpu" else None, seed=seed,
                         prefetch_queue_depth=cfg.prefetch, **extra)
    pipe.build()
    return pipe
