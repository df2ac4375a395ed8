"""The Kinetics-like profiling collection has Kinetics' shape and shards like Kinetics."""

from __future__ import annotations

import csv

import av
import pytest

from shards.kinetics_like import FPS, HEIGHT, SECONDS, WIDTH, build_kinetics_like, main
from shards.sources import discover


@pytest.mark.slow
def test_kinetics_like_clips(tmp_path) -> None:
    root = build_kinetics_like(tmp_path / "klike", per_class=1)
    rows = list(csv.DictReader((root / "annotations" / "train.csv").read_text().splitlines()))
    assert len(rows) == 6 and len({r["label"] for r in rows}) == 6
    (split,) = discover("kinetics", str(root), [], [], 0)
    assert split.split == "train" and len(split.clips) == 6 and not split.missing
    for clip in split.clips:
        with av.open(clip.path) as c:
            s = c.streams.video[0]
            keyframes = sum(p.is_keyframe for p in c.demux(s))
            assert (s.width, s.height, int(s.average_rate), s.frames) == (WIDTH, HEIGHT, FPS, SECONDS * FPS)
            assert 1 <= keyframes <= 6  # x264's default GOP: a keyframe at the start and at scene cuts
    mtime = (root / "annotations" / "train.csv").stat().st_mtime
    assert build_kinetics_like(root, per_class=1) == root  # complete: not rebuilt
    assert (root / "annotations" / "train.csv").stat().st_mtime == mtime
    assert main([str(tmp_path / "bad"), "--per-class", "0"]) == 2
