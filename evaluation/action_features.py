"""Video features for retrieval and the linear probe: the backbone's pooled feature averaged over a
video's test clips (10 uniform clips, centre crop), extracted once and cached.

The cache is one ``.npz`` per (checkpoint file digest, backbone, clip settings, shard identity)
in ``FeatureConfig.cache_dir``, holding ``keys [V]`` and ``feats [V, D]``; a later run with the
same key reuses every video already there and extracts only the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluation.action_config import FeatureConfig
from evaluation.action_data import Video
from evaluation.clip_source import ClipSource

SAVE_EVERY = 64  # batches between cache writes during a long extraction


def cache_path(cfg: FeatureConfig, identity: dict) -> Path | None:
    """Where the features of ``identity`` (checkpoint, backbone, shards) at these settings are cached."""
    if not cfg.cache_dir:
        return None
    clips = asdict(cfg.clips)
    for k in ("flip", "jitter", "jitter_p"):  # training-only settings do not change test clips
        clips.pop(k)
    blob = json.dumps({"identity": identity, "clips": clips, "version": 1}, sort_keys=True)
    return Path(cfg.cache_dir) / f"features-{hashlib.sha1(blob.encode()).hexdigest()[:20]}.npz"


def load_cache(path: Path | None) -> dict[str, np.ndarray]:
    """key -> feature from a cache file (empty when there is none)."""
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path) as z:
            return dict(zip(z["keys"].tolist(), z["feats"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable feature cache ({exc}); delete it") from None


def save_cache(path: Path | None, feats: dict[str, np.ndarray]) -> None:
    """Write the cache atomically (sorted by key)."""
    if path is None or not feats:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(feats)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, keys=np.array(keys), feats=np.stack([feats[k] for k in keys]).astype(np.float32))
    os.replace(tmp, path)


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def run_on_clips(model: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor,
                            device: torch.device, bf16: bool) -> torch.Tensor:
    """Run ``model`` on a clip batch on ``device``; float32 result on the CPU."""
    with _autocast(device, bf16):
        return model(clips.to(device, non_blocking=True)).float().cpu()


def extract(backbone: nn.Module, source: ClipSource, videos: Sequence[Video], cfg: FeatureConfig,
            device: torch.device, cache: Path | None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Features ``[len(videos), D]`` in ``videos`` order; cached ones are read, the rest extracted
    (and added to the cache)."""
    have = load_cache(cache)
    todo = [v for v in dict.fromkeys(videos) if v.key not in have]
    n = cfg.clips.num_clips
    backbone.eval()

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_features(x)["pooled"]

    for b, (chunk, clips) in enumerate(source.test_batches(todo, cfg.batch_videos), start=1):
        feats = run_on_clips(pooled, clips, device, cfg.bf16)
        feats = feats.view(len(chunk), n, -1).mean(dim=1).numpy()
        for v, f in zip(chunk, feats):
            have[v.key] = f
        if progress is not None:
            progress(len(chunk))
        if b % SAVE_EVERY == 0:
            save_cache(cache, have)  # a long extraction keeps what it has if it is interrupted
    if todo:
        save_cache(cache, have)
    return np.stack([have[v.key] for v in videos]).astype(np.float32) if videos else np.zeros((0, 0), np.float32)
