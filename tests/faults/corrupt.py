"""Ways to damage a copy of a shard set, each returning exactly what it damaged.

A damaged spot is named as verify.parquet names it: ``(shard, key, frame)``, with frame None for
a whole sample and key None for a whole shard.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from shards.tario import BLOCK, Member, ShardTarWriter, index_text, read_index

Spot = tuple[str, str | None, int | None]


def copy_set(src: Path, dst: Path) -> Path:
    """A private copy of a shard set (tests damage the copy)."""
    shutil.copytree(src, dst)
    return dst


def members(out: Path, split: str, shard: int) -> tuple[Path, list[dict[str, Member]]]:
    """A shard's tar and, per sample in tar order, its members by extension (from the index)."""
    tar = out / split / f"{split}-{shard:06d}.tar"
    return tar, [{m.ext: m for m in sample} for sample in read_index(tar.with_suffix(".idx"))]


def frame_ranges(tar: Path, sample: dict[str, Member]) -> list[tuple[int, int]]:
    """Absolute byte ranges of a sample's frames inside the tar."""
    with open(tar, "rb") as fh:
        fh.seek(sample["offsets"].offset)
        off = np.frombuffer(fh.read(sample["offsets"].size), "<i8")
    base = sample["mjpeg"].offset
    return [(base + int(a), base + int(b)) for a, b in zip(off[:-1], off[1:])]


def zero_middle(out: Path, split: str, shard: int, sample: int, fraction: float = 0.4) -> set[Spot]:
    """Overwrite the middle ``fraction`` of every frame of one sample with zero bytes (sizes kept)."""
    tar, samples = members(out, split, shard)
    s = samples[sample]
    spots = set()
    with open(tar, "r+b") as fh:
        for i, (a, b) in enumerate(frame_ranges(tar, s)):
            n = int((b - a) * fraction)
            fh.seek(a + (b - a - n) // 2)
            fh.write(bytes(n))
            spots.add((tar.name, s["mjpeg"].key, i))
    return spots


def flip_bits(out: Path, picks: list[tuple[str, int, int, int]], seed: int = 0) -> set[Spot]:
    """Flip one bit inside the entropy-coded data of each picked (split, shard, sample, frame)."""
    rng = np.random.default_rng(seed)
    spots = set()
    for split, shard, sample, frame in picks:
        tar, samples = members(out, split, shard)
        a, b = frame_ranges(tar, samples[sample])[frame]
        at = int(rng.integers(a + (b - a) // 3, b - 16))  # past the JPEG headers, before the EOI marker
        with open(tar, "r+b") as fh:
            fh.seek(at)
            byte = fh.read(1)[0] ^ (1 << int(rng.integers(8)))
            fh.seek(at)
            fh.write(bytes([byte]))
        spots.add((tar.name, samples[sample]["mjpeg"].key, frame))
    return spots


def truncate_in(out: Path, split: str, shard: int, sample: int) -> set[Spot]:
    """Cut the tar in the middle of one sample's ``.mjpeg``: that sample and every later one are lost."""
    tar, samples = members(out, split, shard)
    cut = samples[sample]["mjpeg"]
    with open(tar, "r+b") as fh:
        fh.truncate(cut.offset + cut.size // 2)
    return {(tar.name, None, None)} | {(tar.name, s["mjpeg"].key, None) for s in samples[sample:]}


def disagreeing_index(out: Path, split: str, shard: int, moved: int, dropped: int) -> set[Spot]:
    """Point one sample's ``.mjpeg`` index entry one block further, and leave another sample out."""
    idx = out / split / f"{split}-{shard:06d}.idx"
    lines = idx.read_text().splitlines()
    parts = lines[1 + moved].split()
    parts[1] = str(int(parts[1]) + BLOCK)
    lines[1 + moved] = " ".join(parts)
    keys = [line.split()[3].split(".")[0] for line in lines[1:]]
    del lines[1 + dropped]
    lines[0] = f"v1.2 {len(lines) - 1}"
    idx.write_text("\n".join(lines) + "\n")
    tar = f"{split}-{shard:06d}.tar"
    return {(tar, keys[moved], None), (tar, keys[dropped], None)}


def rewrite(tar: Path, edit) -> None:
    """Rewrite a tar (and its index) through ``edit(key, {ext: bytes}) -> {ext: bytes}``, with the
    sharder's own writer, so the result is a well-formed shard."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    buffer = io.BytesIO()
    writer = ShardTarWriter(buffer)
    for key, parts in samples.items():
        writer.write(key, edit(key, parts))
    writer.close()
    tar.write_bytes(buffer.getvalue())
    tar.with_suffix(".idx").write_text(index_text(writer.samples))


def downgrade_to_v1(out: Path) -> Path:
    """Turn a format v2 set into the v1 layout: no ``.crc`` members, no digests, version 1 everywhere."""

    def v1(key: str, parts: dict[str, bytes]) -> dict[str, bytes]:
        meta = json.loads(parts["json"])
        meta["format_version"] = 1
        return {"mjpeg": parts["mjpeg"], "offsets": parts["offsets"],
                "json": json.dumps(meta, sort_keys=True).encode()}

    card = json.loads((out / "dataset.json").read_text())
    for split, s in card["splits"].items():
        for shard in s["shards"]:
            tar = out / split / shard["tar"]
            rewrite(tar, v1)
            shard["bytes"] = tar.stat().st_size
            del shard["sha256"], shard["index_sha256"]
    card.update(format_version=1, components=["mjpeg", "offsets", "json"])
    del card["checksums"]
    (out / "dataset.json").write_text(json.dumps(card, indent=1))
    return out



def undecodable_frame(out: Path, split: str, shard: int, sample: int, frame: int) -> set[Spot]:
    """Replace one frame by bytes that are no JPEG at all, with offsets and CRC-32 rewritten to match
    (a sharder bug, not damage in transit: only a decoder finds it); the card's sizes follow."""
    tar, samples = members(out, split, shard)
    target = samples[sample]["mjpeg"].key

    def edit(key: str, parts: dict[str, bytes]) -> dict[str, bytes]:
        if key != target:
            return parts
        off = np.frombuffer(parts["offsets"], "<i8")
        frames = [parts["mjpeg"][a:b] for a, b in zip(off[:-1], off[1:])]
        frames[frame] = b"not a JPEG: " + bytes(range(256)) * 4
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype("<i8")
        crcs = np.array([zlib.crc32(f) for f in frames], dtype="<u4")
        return {**parts, "mjpeg": b"".join(frames), "offsets": offsets.tobytes(), "crc": crcs.tobytes()}

    rewrite(tar, edit)
    card = json.loads((out / "dataset.json").read_text())
    entry = next(s for s in card["splits"][split]["shards"] if s["tar"] == tar.name)
    entry["bytes"] = tar.stat().st_size
    (out / "dataset.json").write_text(json.dumps(card, indent=1))
    return {(tar.name, target, frame)}
