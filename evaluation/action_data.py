"""UCF101 / HMDB51 shards for evaluation: the videos of an official split's role, and where clips lie.

The shards come from ``make shards DATA=ucf101|hmdb51`` (see shards/action_sources.py): every video
once in the shard split ``videos``, the roles per official split in ``split_roles.parquet`` and
the dataset, classes and, for generated data, what generated it in ``action.json``. Frame indices here are positions
in the stored frames (the source rate when sharded with FPS=0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.dataset import SampleRef, open_split
from shards.action_sources import SHARD_SPLIT


@dataclass(frozen=True)
class Video:
    """One sharded video: its key, class id, stored frame count and where its frames are."""

    key: str
    label: int
    num_frames: int
    ref: SampleRef


class ActionShards:
    """An opened UCF101/HMDB51 shard directory; ValueError naming the file when something is off."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta = self.root / "action.json"
        if not meta.is_file():
            raise ValueError(f"{meta}: missing; these are not UCF101/HMDB51 shards (make shards DATA=ucf101|hmdb51) "
                             "or their sharding job did not finish (re-run it)")
        self.meta = json.loads(meta.read_text())
        roles = self.root / "split_roles.parquet"
        if not roles.is_file():
            raise ValueError(f"{roles}: missing; re-run the sharding job to finish it")
        self.roles = pq.read_table(roles).to_pylist()
        split = open_split(self.root, SHARD_SPLIT)
        self.refs = {s.key: s for s in split.samples}
        self.identity = hashlib.sha1((self.root / "dataset.json").read_bytes()).hexdigest()[:16]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def generated(self) -> str | None:
        """What generated the collection (None for real data)."""
        return self.meta.get("generated") or None

    def videos(self, split: int, role: str) -> tuple[list[Video], list[str]]:
        """The sharded videos playing ``role`` in official ``split`` (sorted by key), and the keys
        listed for it that are not in the shards (rejected or missing when sharding)."""
        rows = [r for r in self.roles if r["split"] == split and r["role"] == role]
        if not rows:
            raise ValueError(f"{self.root / 'split_roles.parquet'}: no '{role}' videos in split {split}")
        found, absent = [], []
        for r in rows:
            ref = self.refs.get(r["key"])
            if ref is None:
                absent.append(r["key"])
                continue
            if ref.label_id != r["label_id"]:
                raise ValueError(f"{self.root}: video {r['key']} has class id {ref.label_id} in the manifest "
                                 f"but {r['label_id']} in split_roles.parquet")
            found.append(Video(r["key"], r["label_id"], ref.num_frames, ref))
        return found, absent


def uniform_clips(num_frames: int, clip_len: int, stride: int, n: int) -> np.ndarray:
    """Frame indices [n, clip_len] of n clips with centres evenly spaced over the video (DualVar's
    10-clip placement: centres from span/2 to num_frames - span/2, indices clamped to the video)."""
    span = clip_len * stride
    lo = min(span // 2, num_frames)
    hi = max(lo, num_frames - span // 2)
    starts = np.array([max(0, int(c - span // 2)) for c in np.linspace(lo, hi, n)])
    return np.minimum(starts[:, None] + stride * np.arange(clip_len)[None], num_frames - 1)


def random_clip(num_frames: int, clip_len: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices [clip_len] of one training clip (DualVar's sampler): a uniform start when the
    video is longer than the span, else the frames it has, padded with the first or the last frame."""
    span = clip_len * stride
    if num_frames > span:
        return int(rng.integers(0, num_frames - span)) + stride * np.arange(clip_len)
    seq = stride * np.arange(clip_len) + int(rng.integers(0, stride))
    seq = seq[seq < num_frames]
    pad_left = rng.random() < 0.5
    out = np.full(clip_len, 0 if pad_left else num_frames - 1)
    if len(seq):
        if pad_left:
            out[clip_len - len(seq):] = seq
        else:
            out[:len(seq)] = seq
    return out
