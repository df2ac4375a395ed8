"""Per-benchmark evaluation: read a video, extract features, propagate, score, draw overlays.

Every ``run_*`` writes into ``out`` and returns (summary, per-sequence rows header, rows,
timing). Frames and features live on ``device``; masks go to numpy only for writing/scoring.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evaluation import overlays
from evaluation.config import PROTOCOLS, EvalConfig, input_size
from evaluation.datasets import Video, load_frames, read_index_png, write_index_png
from evaluation.metrics import (
    PCK_ALPHAS,
    VOID,
    confusion,
    davis_sequence,
    davis_summary,
    mean_iou,
    pck_hits,
)
from evaluation.propagation import (
    FeatureFn,
    downsample_labels,
    extract_features,
    propagate,
    sync,
    upsample_labels,
)

Result = tuple[dict[str, float], list[str], list[list], dict[str, float]]


class Clock:
    """Accumulates device-synchronised seconds for feature extraction and propagation."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.frames, self.features_s, self.propagate_s = device, 0, 0.0, 0.0
        self.start = time.perf_counter()

    def lap(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def timing(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start
        model = self.features_s + self.propagate_s
        return {"frames": float(self.frames), "features_fps": self.frames / max(self.features_s, 1e-9),
                "propagation_fps": self.frames / max(self.propagate_s, 1e-9),
                "model_fps": self.frames / max(model, 1e-9), "wall_fps": self.frames / max(wall, 1e-9),
                "wall_s": wall}


def _features(video: Video, feature_fn: FeatureFn, cfg: EvalConfig, device: torch.device,
              clock: Clock) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
    frames = load_frames(video.frames, device)
    hw = tuple(frames[0].shape[1:])
    for p, fr in zip(video.frames, frames):
        if tuple(fr.shape[1:]) != hw:
            raise ValueError(f"{p}: frame size {tuple(fr.shape[1:])} differs from the first frame's {hw}")
    size = cfg.input_size or input_size(cfg.task, *hw)
    t0 = clock.lap()
    feats = extract_features(feature_fn, frames, size, cfg.propagation.batch_size, cfg.propagation.bf16)
    clock.features_s += clock.lap() - t0
    clock.frames += len(frames)
    return frames, feats, hw


def _prop_cfg(cfg: EvalConfig):
    p = cfg.propagation
    return p if p.topk is not None else dataclasses.replace(p, topk=PROTOCOLS[cfg.task].topk)


def _propagate_masks(feats: torch.Tensor, ids: np.ndarray, lut: np.ndarray, cfg: EvalConfig,
                     clock: Clock) -> list[np.ndarray]:
    """Propagate a first-frame label map (channel indices ``ids``) and map channels via ``lut``."""
    device, (H, W) = feats.device, ids.shape
    onehot = F.one_hot(torch.from_numpy(ids.astype(np.int64)).to(device), len(lut)).permute(2, 0, 1)
    first = downsample_labels(onehot, tuple(feats.shape[1:3]))
    preds = [lut[ids]]
    t0 = clock.lap()
    for _, soft in propagate(feats, first, _prop_cfg(cfg)):
        idx = upsample_labels(soft, (H, W)).argmax(0).to(torch.uint8).cpu().numpy()
        preds.append(lut[idx])
    clock.propagate_s += clock.lap() - t0
    return preds


def _rgb(frame: torch.Tensor) -> np.ndarray:
    return frame.permute(1, 2, 0).cpu().numpy()


def run_davis(videos: list[Video], feature_fn: FeatureFn, cfg: EvalConfig, device: torch.device,
              out: Path) -> dict[str, float]:
    """Propagate each sequence's first mask; write <out>/results/<seq>/<frame>.png; return timing."""
    clock = Clock(device)
    for v in videos:
        _, feats, hw = _features(v, feature_fn, cfg, device, clock)
        gt0 = read_index_png(v.masks[0])
        if gt0.shape != hw:
            raise ValueError(f"{v.masks[0]}: annotation size {gt0.shape} != frame size {hw}")
        ids = np.where(gt0 == VOID, 0, gt0)
        lut = np.arange(int(ids.max()) + 1, dtype=np.uint8)
        preds = _propagate_masks(feats, ids, lut, cfg, clock)
        for frame_path, mask in zip(v.frames, preds):
            write_index_png(out / "results" / v.name / f"{frame_path.stem}.png", mask)
    return clock.timing()


def score_davis(videos: list[Video], results: Path, out: Path, n_overlays: int) -> Result:
    """Score a DAVIS-style results folder (<seq>/<frame>.png) like the official toolkit."""
    if not results.is_dir():
        raise ValueError(f"{results}: results directory is missing")
    per_object, rows = {}, []
    for v in videos:
        gt = [read_index_png(m) for m in v.masks]
        pred = []
        for f in v.frames:
            path = results / v.name / f"{f.stem}.png"
            if not path.is_file():
                raise ValueError(f"{path}: result mask is missing")
            pred.append(read_index_png(path))
        for obj, (j, fm) in davis_sequence(gt, pred).items():
            per_object[f"{v.name}_{obj}"] = (j, fm)
            rows.append([f"{v.name}_{obj}", float(j.mean()), float(fm.mean())])
        picks = overlays.pick_frames(len(v.frames), n_overlays)
        shown = load_frames([v.frames[t] for t in picks], torch.device("cpu")) if picks else []
        for t, frame in zip(picks, shown):
            img = _rgb(frame)
            overlays.save_pair(out / "overlays" / v.name / f"{v.frames[t].stem}.png",
                               overlays.blend_mask(img, gt[t]), overlays.blend_mask(img, pred[t]))
    return davis_summary(per_object), ["object", "J", "F"], rows, {}


def joint_heatmaps(joints: np.ndarray, hw: tuple[int, int], grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian maps [J, h, w] on the feature grid centred on pixel joints [J, 2] (x, y)."""
    (H, W), (h, w) = hw, grid
    x = torch.as_tensor((joints[:, 0] + 0.5) * w / W - 0.5, dtype=torch.float32)
    y = torch.as_tensor((joints[:, 1] + 0.5) * h / H - 0.5, dtype=torch.float32)
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d2 = (gx[None] - x[:, None, None]) ** 2 + (gy[None] - y[:, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def decode_joints(maps: torch.Tensor, k: int) -> np.ndarray:
    """Joint positions [J, 2] (x, y): weighted mean of each map's top-k pixels."""
    J, H, W = maps.shape
    vals, idx = maps.reshape(J, -1).topk(k, dim=1)
    wts = vals.clamp_min(0) + 1e-12
    wts = wts / wts.sum(1, keepdim=True)
    x = ((idx % W).float() * wts).sum(1)
    y = ((idx // W).float() * wts).sum(1)
    return torch.stack([x, y], 1).cpu().numpy().astype(np.float64)


def run_jhmdb(videos: list[Video], feature_fn: FeatureFn, cfg: EvalConfig, device: torch.device, out: Path) -> Result:
    """Propagate first-frame joint heat maps; PCK over frames 1 .. T-1."""
    clock, rows, all_hits = Clock(device), [], []
    for v in videos:
        frames, feats, hw = _features(v, feature_fn, cfg, device, clock)
        first = joint_heatmaps(v.joints[0], hw, tuple(feats.shape[1:3]), cfg.joint_sigma).to(device)
        preds = [v.joints[0]]
        t0 = clock.lap()
        for _, soft in propagate(feats, first, _prop_cfg(cfg)):
            preds.append(decode_joints(upsample_labels(soft, hw), cfg.pose_topk))
        clock.propagate_s += clock.lap() - t0
        if len(preds) < 2:
            raise ValueError(f"{v.name}: needs at least 2 frames to score")
        hits = pck_hits(np.stack(preds[1:]), v.joints[1:])  # [A, T-1, J]
        all_hits.append(hits.reshape(len(PCK_ALPHAS), -1))
        rows.append([v.name, *[float(h.mean()) for h in hits]])
        for t in overlays.pick_frames(len(frames), cfg.overlays_per_video):
            img = _rgb(frames[t])
            overlays.save_pair(out / "overlays" / v.name.replace("/", "__") / f"{v.frames[t].stem}.png",
                               overlays.draw_joints(img, v.joints[t]), overlays.draw_joints(img, preds[t]))
    hits = np.concatenate(all_hits, axis=1)
    summary = {f"PCK@{a}": float(h.mean()) for a, h in zip(PCK_ALPHAS, hits)}
    return summary, ["sequence", *summary.keys()], rows, clock.timing()


def run_vip(videos: list[Video], feature_fn: FeatureFn, cfg: EvalConfig, device: torch.device, out: Path) -> Result:
    """Propagate first-frame part masks; mIoU from the confusion over annotated frames 1 .. T-1."""
    n = cfg.vip_classes
    clock, rows, total = Clock(device), [], np.zeros((n, n), dtype=np.int64)
    for v in videos:
        frames, feats, hw = _features(v, feature_fn, cfg, device, clock)
        gt0 = read_index_png(v.masks[0])
        bad = np.unique(gt0[(gt0 >= n) & (gt0 != VOID)])
        if gt0.shape != hw or bad.size:
            raise ValueError(f"{v.masks[0]}: size {gt0.shape} (frame {hw}) or class ids {bad.tolist()} >= {n}")
        lut = np.unique(gt0[gt0 < n]).astype(np.uint8)  # channel -> class id; void joins lut[0]
        ids = np.searchsorted(lut, np.where(gt0 < n, gt0, lut[0]))
        preds = _propagate_masks(feats, ids, lut, cfg, clock)
        conf = np.zeros_like(total)
        for t in range(1, len(preds)):
            if v.masks[t] is not None:
                gt = read_index_png(v.masks[t])
                if gt.shape != hw:
                    raise ValueError(f"{v.masks[t]}: annotation size {gt.shape} != frame size {hw}")
                conf += confusion(gt, preds[t], n)
        total += conf
        rows.append([v.name, mean_iou(conf) if conf.any() else float("nan")])
        for t in overlays.pick_frames(len(frames), cfg.overlays_per_video):
            img = _rgb(frames[t])
            gt = read_index_png(v.masks[t]) if v.masks[t] is not None else np.zeros(hw, np.uint8)
            overlays.save_pair(out / "overlays" / v.name / f"{v.frames[t].stem}.png",
                               overlays.blend_mask(img, gt), overlays.blend_mask(img, preds[t]))
    if not total.any():
        raise ValueError("VIP: no annotated frame after the first in any video; nothing to score")
    return {"mIoU": mean_iou(total)}, ["sequence", "mIoU"], rows, clock.timing()
