"""Everything random about a batch of clip samples, drawn in numpy: frames, crops, flags, labels.

The clip workloads (``dualvar``, ``cstp``, ``localglobal``) use the sampling rules of
``pipeline.clips`` unchanged: ``plan_batch`` feeds them the batch's frame counts, frame sizes
and frame rates, with draws from generators seeded by (seed, rank, epoch, batch, purpose)
(``pipeline.params.batch_rng``: FRAMES for the rule's draws, PHOTOMETRIC for colour, blur and
tilt), so a batch is the same in range and whole mode and whatever pipeline made it. The graph's
device side (``pipeline.clip_views``) only applies the result.

A plan (arrays ``[B, ...]``):

- ``frames [B, N]``: the stored frame of each JPEG slot; the ``Layout`` of the workload says
  which slots make each of its K clips (DualVar's c3 reuses c1's slots: its frames are decoded
  once and cropped twice);
- per clip k: ``roi_start/k``, ``roi_end/k`` [B, 2] relative (y, x) for ``fn.resize`` (x ends
  swapped for a horizontal flip), ``angle/k`` [B] degrees counter-clockwise (CSTP: quarter turns
  plus the strong augmentation's tilt), ``colour/k`` [B, 3, 3] and ``offset/k`` [B, 3] (the
  affine colour map of ``pipeline.params.colour_maps``; identity where the clip gets no colour
  augmentation), ``blur_rows/k`` [B, 1, w] and ``blur_cols/k`` [B, w, 1] separable taps;
- the labels of the objective, named as in the batch contract of ``pipeline.clips``.

Order of operations per clip: crop + resize (flip through the ROI) → rotate → colour → blur →
normalise. The flip comes before the rotation so that CSTP's rotation label is the rotation the
content shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.clips import (
    cstp_clips,
    cstp_draws,
    dualvar_clips,
    dualvar_draws,
    localglobal_clips,
    localglobal_draws,
)
from pipeline.config import PipelineConfig
from pipeline.params import FRAMES, PHOTOMETRIC, batch_rng, blur_taps, colour_draws, colour_maps

CLIP_WORKLOADS = ("dualvar", "cstp", "localglobal")


@dataclass(frozen=True)
class Layout:
    """Static shape of a clip workload: clip k reads slots ``clips[k]`` and is resized to
    ``sizes[k]``²; ``outputs`` maps each graph output to the clips stacked in it."""

    slots: int
    clips: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]
    labels: tuple[str, ...]

    @property
    def delivered_frames(self) -> int:
        return sum(len(c) for c in self.clips)


def layout_of(cfg: PipelineConfig) -> Layout:
    """The workload's ``Layout``."""
    s = cfg.clip_size
    if cfg.workload == "dualvar":
        f = cfg.dualvar.frames
        c1, c2 = tuple(range(f)), tuple(range(f, 2 * f))
        return Layout(2 * f, (c1, c2, c1), (s,) * 3, {"clips": (0, 1, 2)}, ("perm",))
    if cfg.workload == "cstp":
        f = cfg.cstp.frames
        return Layout(2 * f, (tuple(range(f)), tuple(range(f, 2 * f))), (s, s), {"clips": (0, 1)},
                      ("spatial", "temporal", "pb", "rot"))
    if cfg.workload == "localglobal":
        lg = cfg.localglobal
        fg, fl, m = lg.global_frames, lg.local_frames, lg.num_local
        clips = (tuple(range(fg)),) + tuple(tuple(range(fg + i * fl, fg + (i + 1) * fl)) for i in range(m))
        return Layout(fg + m * fl, clips, (s,) + (cfg.local_clip_size,) * m,
                      {"global": (0,), "local": tuple(range(1, m + 1))}, ("local_boxes", "local_times", "order"))
    raise ValueError(f"pipeline.workload '{cfg.workload}' is not a clip workload {CLIP_WORKLOADS}")


def rois(boxes: np.ndarray, h: np.ndarray, w: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes ``[B, 4]`` (x0, y0, x1, y1) → relative (y, x) ROI start and end ``[B, 2]`` float32,
    x ends swapped where ``flip``."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    x0, x1 = x0 / w, x1 / w
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)
    return (np.stack([y0 / h, x0], -1).astype(np.float32), np.stack([y1 / h, x1], -1).astype(np.float32))


def clip_photometric(rng: np.random.Generator, on: np.ndarray, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Per clip (``on [B, K]``: the clips that get colour and blur): ``colour`` [B, K, 3, 3],
    ``offset`` [B, K, 3] when jitter or grey can happen, ``blur`` [B, K, w] taps when blur can."""
    b, k = on.shape
    out: dict[str, np.ndarray] = {}
    if cfg.jitter_p > 0 or cfg.grayscale_p > 0:
        m, offset = colour_maps(colour_draws(rng, b, k, cfg), cfg.contrast_pivot)
        out["colour"] = np.where(on[..., None, None], m, np.eye(3, dtype=np.float32)).astype(np.float32)
        out["offset"] = np.where(on[..., None], offset, 0.0).astype(np.float32)
    if cfg.clip_blur_p > 0:
        u = rng.random((2, b, k))
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[1]
        out["blur"] = blur_taps((u[0] < cfg.clip_blur_p) & on, sigma, cfg)
    return out


def dualvar_plan(cfg: PipelineConfig, d_rng, p_rng, t, h, w, fps) -> dict[str, np.ndarray]:
    c = dualvar_clips(dualvar_draws(d_rng, len(t), cfg.dualvar), t, h, w, fps, cfg.dualvar)
    b = len(t)
    return {"frames": c["frames"][:, :2].reshape(b, -1), "boxes": c["boxes"], "flip": np.zeros((b, 3), bool),
            "angle": None, "on": ~c["plain"], "perm": c["perm"]}


def cstp_plan(cfg: PipelineConfig, d_rng, p_rng, t, h, w, fps) -> dict[str, np.ndarray]:
    c = cstp_clips(cstp_draws(d_rng, len(t), cfg.cstp), t, h, w, fps, cfg.cstp)
    tilt = np.where(c["strong"], p_rng.uniform(-cfg.clip_tilt, cfg.clip_tilt, c["strong"].shape), 0.0)
    return {"frames": c["frames"].reshape(len(t), -1), "boxes": c["boxes"], "flip": c["flip"],
            "angle": 90.0 * c["rot"] + tilt, "on": c["strong"], "spatial": c["spatial"],
            "temporal": c["temporal"], "pb": c["pb"], "rot": c["rot"]}


def localglobal_plan(cfg: PipelineConfig, d_rng, p_rng, t, h, w, fps) -> dict[str, np.ndarray]:
    lg = cfg.localglobal
    c = localglobal_clips(localglobal_draws(d_rng, len(t), lg), t, h, w, fps, lg)
    b, m = len(t), lg.num_local
    frames = np.concatenate([c["global_frames"], c["local_frames"].reshape(b, -1)], 1)
    boxes = np.concatenate([c["global_box"][:, None], c["local_box_px"]], 1)
    return {"frames": frames, "boxes": boxes, "flip": np.repeat(c["flip"][:, None], m + 1, 1), "angle": None,
            "on": np.ones((b, m + 1), bool), "local_boxes": c["local_boxes"], "local_times": c["local_times"],
            "order": c["order"]}


PLANS = {"dualvar": dualvar_plan, "cstp": cstp_plan, "localglobal": localglobal_plan}


def plan_batch(cfg: PipelineConfig, seed_words: tuple[int, ...], epoch: int, batch: int, num_frames, height,
               width, fps) -> dict[str, np.ndarray]:
    """The batch's plan (see the module docstring) for per-sample ``num_frames``, ``height``,
    ``width``, ``fps`` [B]."""
    t, h, w = (np.asarray(v, np.int64).reshape(-1) for v in (num_frames, height, width))
    fps = np.asarray(fps, np.float64).reshape(-1)
    p_rng = batch_rng(seed_words, epoch, batch, PHOTOMETRIC)
    raw = PLANS[cfg.workload](cfg, batch_rng(seed_words, epoch, batch, FRAMES), p_rng, t, h, w, fps)
    lay = layout_of(cfg)
    out = {"frames": raw["frames"].astype(np.int64)}
    for k in range(len(lay.clips)):
        out[f"roi_start/{k}"], out[f"roi_end/{k}"] = rois(raw["boxes"][:, k], h, w, raw["flip"][:, k])
        if raw["angle"] is not None:
            out[f"angle/{k}"] = raw["angle"][:, k].astype(np.float32)
    photo = clip_photometric(p_rng, raw["on"], cfg)
    for k in range(len(lay.clips)):
        if "colour" in photo:
            out[f"colour/{k}"], out[f"offset/{k}"] = photo["colour"][:, k], photo["offset"][:, k]
        if "blur" in photo:
            taps = photo["blur"][:, k]
            out[f"blur_rows/{k}"], out[f"blur_cols/{k}"] = taps[:, None, :], taps[:, :, None]
    for name in lay.labels:
        out[name] = raw[name].astype(np.float32 if raw[name].dtype.kind == "f" else np.int64)
    return out
