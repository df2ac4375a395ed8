"""T-CoRe views as DALI graph pieces: the device side, which only applies drawn parameters.

Every random choice comes from the host side as parameter nodes (``pipeline.params`` names the
arrays and says how they are drawn); here each view is cut and every photometric step applied,
on the GPU in GPU mode (on the CPU in CPU mode, the same graph). Shapes: images HWC uint8;
sequences [V,H,W,3] uint8; outputs [V,3,H,W] float.

- Crops: ``fn.resize`` of the decoded frame with a relative ROI (antialiased when downscaling,
  as PIL and torchvision do); a flipped view has its ROI's x ends swapped. Interpolation:
  ``global_interp`` for the current frame's global crops, ``local_interp`` for the local crops,
  ``context_interp`` for the past/future centred crop (each decoded frame is resized once; its
  two views are two copies).
- Views of a photometric group (``params.view_groups``) are stacked as one uint8 sequence and
  every step runs once per group with per-view ("per-frame") parameters: colour as one affine
  map (``coord_transform``; with ``contrast_pivot: mean`` the view's mean colour is reduced
  first and the pivot added in float), Gaussian blur as two separable ``fn.filter`` passes,
  solarize as ``brightness_contrast`` (+256 on the views whose coin says yes) and one 512-entry
  ``lookup_table``. Each output's frames are then gathered (uint8) and one
  ``crop_mirror_normalize`` writes its float [V,3,H,W].
- ``simple`` workload: the decoder cuts the crop window itself (``decoders.image_slice``) and it
  is resized linearly (antialiased), as FFCV's decoder does with OpenCV's INTER_AREA, so that the
  FFCV comparison is on equal work.
"""

from __future__ import annotations

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from pipeline.config import PipelineConfig
from pipeline.params import view_groups

INTERP = {"cubic": types.INTERP_CUBIC, "linear": types.INTERP_LINEAR}
# solarize: entries 0..255 are the identity, 256..511 the solarized value of (entry - 256)
SOLARIZE_LUT = list(range(256)) + [v if v < 128 else 255 - v for v in range(256)]


def crop(img, params: dict, view: str, size: int, interp: str):
    """The view's window of ``img`` (relative ROI from the host side) resized to size²."""
    return fn.resize(img, size=[size, size], roi_start=params[f"roi_start/{view}"], roi_end=params[f"roi_end/{view}"],
                     roi_relative=True, interp_type=INTERP[interp], antialias=True)


def jitter(seq, matrix, offset, pivot: str):
    """Per-view colour map x -> M·x + offset, rounded and clamped to uint8 (see ``pipeline.params``).

    ``pivot == "mid"``: ``offset`` is added as is. ``"mean"``: every channel gets
    ``offset · (the view's mean RGB)``, the contrast pivot at the view's mean grey.
    """
    if pivot == "mid":
        return fn.coord_transform(seq, M=matrix, T=offset, dtype=types.UINT8)
    weights = offset.gpu() if seq.device == "gpu" else offset
    mean = fn.reductions.mean(seq, axes=[1, 2], dtype=types.FLOAT)  # [n, 3]
    shift = fn.reshape(fn.reductions.sum(mean * weights, axes=[1]), shape=[-1, 1, 1, 1], layout="")
    mapped = fn.coord_transform(seq, M=matrix, dtype=types.FLOAT) + shift
    return fn.cast(dmath.clamp(mapped, 0.0, 255.0), dtype=types.UINT8)


def blur(seq, rows, cols):
    """Separable per-view Gaussian blur: [n, 1, w] taps along rows, then [n, w, 1] along columns."""
    return fn.filter(fn.filter(seq, rows), cols)


def solarize(seq, shift):
    """v -> 255 - v for v >= 128 on the views whose ``shift`` is 256 (in int16 units), else v.

    ``brightness_contrast`` adds the shift (brightness and contrast stay 1), then one
    512-entry table maps v to v and 256 + v to the solarized v.
    """
    seq = fn.brightness_contrast(seq, brightness_shift=shift, dtype=types.INT16)
    return fn.lookup_table(seq, keys=list(range(512)), values=SOLARIZE_LUT, dtype=types.UINT8)


def photometric(views: dict, params: dict, cfg: PipelineConfig) -> dict:
    """HWC uint8 views → {view: (sequence, frame index)} after jitter, blur and solarize per group."""
    out = {}
    for i, grp in enumerate(view_groups(cfg)):
        members = [views[v] for v in grp.views]
        seq = fn.stack(*members, axis_name="F") if len(members) > 1 else fn.expand_dims(members[0], axes=[0],
                                                                                         new_axis_names="F")
        if f"colour/{i}" in params:
            seq = jitter(seq, params[f"colour/{i}"], params[f"offset/{i}"], cfg.contrast_pivot)
        if f"blur_rows/{i}" in params:
            seq = blur(seq, params[f"blur_rows/{i}"], params[f"blur_cols/{i}"])
        if f"solarize/{i}" in params:
            seq = solarize(seq, params[f"solarize/{i}"])
        out.update({v: (seq, j, len(grp.views)) for j, v in enumerate(grp.views)})
    return out


def normalize(frames: list, cfg: PipelineConfig, out_dtype):
    """(sequence, frame, size) triples from ``photometric`` → [V,3,H,W] with ImageNet mean/std, in one pass."""
    seq, _, size = frames[0]
    whole = size == len(frames) and all(f[0] is seq and f[1] == j for j, f in enumerate(frames))
    if not whole:  # gather the frames (uint8, cheap) into one sequence
        seq = fn.stack(*[s[j] for s, j, _ in frames], axis_name="F")
    mean = [255.0 * m for m in cfg.mean]
    std = [255.0 * s for s in cfg.std]
    return fn.crop_mirror_normalize(seq, mean=mean, std=std, output_layout="FCHW", dtype=out_dtype)


def tcore_views(imgs: list, params: dict, cfg: PipelineConfig, out_dtype) -> tuple:
    """Decoded (past, current, future) frames → current_global [G,3,H,W], current_local [L,3,h,w]
    (None when L = 0), past [2,3,H,W], future [2,3,H,W]."""
    views = {f"global{i}": crop(imgs[1], params, f"global{i}", cfg.global_size, cfg.global_interp)
             for i in range(cfg.num_global)}
    views.update({f"local{i}": crop(imgs[1], params, f"local{i}", cfg.local_size, cfg.local_interp)
                  for i in range(cfg.num_local)})
    for name, img in (("past", imgs[0]), ("future", imgs[2])):
        base = crop(img, params, "context", cfg.global_size, cfg.context_interp)
        views[f"{name}0"] = views[f"{name}1"] = base
    frames = photometric(views, params, cfg)

    def output(prefix: str, n: int):
        return normalize([frames[f"{prefix}{i}"] for i in range(n)], cfg, out_dtype)

    local = output("local", cfg.num_local) if cfg.num_local else None
    return output("global", cfg.num_global), local, output("past", 2), output("future", 2)


def simple_view(jpeg, view: str, params: dict, decoder_device: str, cfg: PipelineConfig, out_dtype, **decoder_kwargs):
    """The `simple` workload: decode only the view's crop window and resize it: [1,3,H,W]."""
    v = fn.decoders.image_slice(jpeg, device=decoder_device, output_type=types.RGB, axis_names="HW",
                                rel_start=params[f"roi_start/{view}"], rel_end=params[f"roi_end/{view}"],
                                **decoder_kwargs)
    v = fn.resize(v, size=[cfg.global_size] * 2, interp_type=types.INTERP_LINEAR, antialias=True)
    return normalize([(fn.expand_dims(v, axes=[0], new_axis_names="F"), 0, 1)], cfg, out_dtype)
