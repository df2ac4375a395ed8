"""A hostile Kinetics tree: every listed clip ends up exactly once in a shard, rejected or missing."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards.cli import main as shards_main
from shards.inspect import main as inspect_main
from tests.faults.common import card
from tests.faults.hostile import SHARD_FLAGS, build_hostile


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(root, shards dir, expected outcome by (split, stem)) of the hostile tree."""
    base = tmp_path_factory.mktemp("hostile")
    expected = build_hostile(base / "kinetics")
    out = base / "shards"
    code = shards_main(["--data", "kinetics", "--root", str(base / "kinetics"), "--out", str(out),
                        "--max-per-shard", "3", "--workers", "2", *SHARD_FLAGS])
    assert code == 0
    return base / "kinetics", out, expected


def outcomes(out: Path) -> list[tuple[tuple[str, str], str]]:
    """Every record of the output as ((split, source file stem), where it went)."""
    records = []
    for split in card(out)["splits"]:
        rows = pq.read_table(out / split / "manifest.parquet").to_pylist()
        records += [((split, Path(r["source"]).stem), "ok") for r in rows]
    records += [((r["split"], Path(r["source"]).stem), "rejected")
                for r in pq.read_table(out / "rejected.parquet").to_pylist()]
    records += [((r["split"], r["key"]), "missing") for r in pq.read_table(out / "missing.parquet").to_pylist()]
    return records


def sample_meta(out: Path, split: str) -> dict[str, dict]:
    """The ``.json`` component of every sample of a split, by source file stem."""
    metas = {}
    for tar_path in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    metas[Path(meta["source"]).stem] = meta
    return metas


def test_every_listed_clip_is_accounted_for_exactly_once(hostile) -> None:
    _root, out, expected = hostile
    records = outcomes(out)
    counts = Counter(where for where, _ in records)
    assert [k for k, n in counts.items() if n > 1] == []  # never twice
    assert dict(records) == expected  # every listed clip, where it was expected to go
    splits = card(out)["splits"]
    assert (splits["train"]["duplicate_files"], splits["train"]["unlisted_files"]) == (1, 1)
    skipped = pq.read_table(out / "skipped.parquet").to_pylist()  # the unused files, by path, with why
    assert sorted(r["reason"].split(":")[0] for r in skipped) == ["duplicate", "unlisted"]
    assert any(r["source"].endswith("unlisted000_000000_000002.mp4") for r in skipped)
    assert all(r["split"] == "train" and (_root / r["source"]).is_file() for r in skipped)
    assert splits["train"]["found"] == splits["train"]["samples"] + splits["train"]["rejected"]


def test_rejects_say_why(hostile) -> None:
    _root, out, _expected = hostile
    reasons = [f"{r['stage']}: {r['reason']}" for r in pq.read_table(out / "rejected.parquet").to_pylist()]
    text = " | ".join(reasons)
    for needle in ("zero-byte file", "not a readable video container", "no video stream",
                   "fewer than MIN_FRAMES=4"):
        assert needle in text
    assert len(reasons) == 6 and all(r.strip() and "\n" not in r for r in reasons)


def test_odd_sources_decode_to_the_expected_frames(hostile) -> None:
    _root, out, _expected = hostile
    metas = sample_meta(out, "train")
    by_class = {Path(m["source"]).parent.name: m for m in metas.values()}
    assert by_class["portrait"]["width"] == 64 and by_class["portrait"]["height"] == 96
    rotated = by_class["rotated"]
    assert (rotated["source_rotation"], rotated["width"], rotated["height"]) == (90, 64, 96)
    huge = by_class["huge"]
    assert (huge["source_width"], huge["source_height"], huge["height"], huge["num_frames"]) == (3840, 2160, 64, 12)
    odd = by_class["odd size"]
    assert (odd["source_width"], odd["source_height"]) == (97, 61)
    assert odd["width"] % 2 == 0 and odd["height"] == 64
    assert by_class["hevc"]["source_codec"] == "hevc" and by_class["vp9"]["source_codec"] == "vp9"
    assert by_class["ten bit"]["source_codec"] == "h264" and by_class["renamed"]["source_codec"] == "h264"
    assert by_class["vfr"]["num_frames"] == 7  # 2.0 s of irregular frames + the last one's 1/25 s, at 3 fps
    keys = [m["key"] for m in metas.values()]
    assert len(set(keys)) == len(keys) and all("." not in k and " " not in k and k.isascii() for k in keys)


def test_the_good_ones_decode(hostile, capsys) -> None:
    _root, out, _expected = hostile
    assert inspect_main([str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "ok train: 14 samples" in printed and "ok val: 2 samples" in printed
