"""Bad shards are refused at loader start with an error naming the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.loader import build_loader
from shards.tario import read_index

CFG = PipelineConfig(global_size=16, local_size=16, num_local=0)


@pytest.fixture()
def shards(sample_shards, tmp_path) -> Path:
    out = tmp_path / "shards"
    shutil.copytree(sample_shards, out)
    return out


def _load(shards: Path, **kw):
    return build_loader(PipelineConfig(**{**CFG.__dict__, **kw}), shards, batch_size=2, device="cpu")


def test_truncated_tar(shards: Path) -> None:
    tar = shards / "train" / "train-000001.tar"
    last = read_index(tar.with_suffix(".idx"))[-1][-1]
    os.truncate(tar, last.offset + last.size - 10)  # cut inside the last member
    with pytest.raises(ValueError, match=r"train-000001\.tar.*truncated"):
        _load(shards)
    card = json.loads((shards / "dataset.json").read_text())  # a card rewritten to match: the index catches it
    card["splits"]["train"]["shards"][1]["bytes"] = tar.stat().st_size
    (shards / "dataset.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"train-000001\.tar.*beyond the tar"):
        _load(shards)


def test_index_not_matching_tar(shards: Path) -> None:
    idx = shards / "train" / "train-000002.idx"
    lines = idx.read_text().splitlines()
    parts = lines[2].split()
    parts[1] = str(int(parts[1]) + 512)  # the mjpeg member of sample 2 "moved" by one block
    lines[2] = " ".join(parts)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train-000002\.tar.*does not match"):
        _load(shards)


def test_inconsistent_offsets(shards: Path) -> None:
    tar = shards / "train" / "train-000000.tar"
    member = next(m for m in read_index(tar.with_suffix(".idx"))[1] if m.ext == "offsets")
    with open(tar, "r+b") as fh:
        fh.seek(member.offset + member.size - 8)
        fh.write(np.array([10**9], dtype="<i8").tobytes())
    with pytest.raises(ValueError, match=rf"train-000000\.tar.*{member.key}.*inconsistent offsets"):
        _load(shards)
    split = open_split(shards, "train", verify_offsets=False)  # the cheap checks alone pass
    assert len(split.samples) == 18


def test_offsets_checks_are_shared_by_ranks(shards: Path) -> None:
    """Rank r reads the offsets tables of every world_size-th shard from r: only the rank that owns
    the broken shard finds it; every rank still runs the cheap size and index checks."""
    tar = shards / "train" / "train-000001.tar"
    member = next(m for m in read_index(tar.with_suffix(".idx"))[0] if m.ext == "offsets")
    with open(tar, "r+b") as fh:
        fh.seek(member.offset + 8)
        fh.write(np.array([-5], dtype="<i8").tobytes())
    with pytest.raises(ValueError, match=rf"train-000001\.tar.*{member.key}.*inconsistent offsets"):
        open_split(shards, "train", rank=1, world_size=2)
    assert len(open_split(shards, "train", rank=0, world_size=2).samples) == 18
    assert len(open_split(shards, "train", rank=0, world_size=3).samples) == 18
    with pytest.raises(ValueError, match=r"train-000001\.tar.*inconsistent offsets"):
        build_loader(CFG, shards, batch_size=2, device="cpu", rank=1, world_size=3)
    os.truncate(tar, tar.stat().st_size - 512)  # a truncated tar: every rank sees it
    for rank in (0, 1, 2):
        with pytest.raises(ValueError, match=r"train-000001\.tar.*truncated"):
            open_split(shards, "train", rank=rank, world_size=3)


def test_missing_card_and_split(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no split 'nope'"):
        _load(shards, split="nope")
    with pytest.raises(ValueError, match="dataset.json.*no dataset card"):
        _load(tmp_path)
    (shards / "val" / "val-000000.idx").unlink()
    with pytest.raises(ValueError, match=r"val-000000\.idx.*missing"):
        _load(shards, split="val")


def test_url_shards_are_refused_with_a_hint(shards: Path) -> None:
    with pytest.raises(ValueError, match=r"shards s3://bucket/k700: the loader reads shards from a local"):
        _load("s3://bucket/k700")
    assert len(_load(f"{shards}")) > 0  # the same call on a local directory works
