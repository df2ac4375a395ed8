"""A split of a shard directory, read from its dataset card and checked before loading.

The dataset card (``dataset.json``) lists every split's shards with their sample counts and tar
sizes; the loaders trust it instead of globbing. ``open_split`` checks, cheaply and before any
decoding, that each tar has the size the card says (a truncated tar fails here), that its index
points at tar members of the right names (read from the 512-byte tar headers) and, when asked,
that every sample's offsets table is consistent with its ``.mjpeg`` member. Every problem is a
``ValueError`` naming the file, except with ``tolerant`` (range mode, which replaces bad samples
while it trains): then a damaged sample (cut off by a truncated tar, its index entry pointing at
another member or missing, its offsets or checksum table inconsistent) stays in the split, with
its id and position as in an undamaged copy, and is listed in ``Split.damaged``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from shards.card import has_checksums, read_card
from shards.integrity import CRC_EXT, CRC_TABLE, INDEX, OFFSETS, TRUNCATED
from shards.storage import protocol
from shards.tario import BLOCK, Member, check_index_against_tar, read_index

COMPONENTS = ("mjpeg", "offsets", "json")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie, and what the manifest says about it."""

    key: str
    tar: str
    mjpeg_offset: int
    mjpeg_size: int
    offsets_offset: int
    num_frames: int
    label_id: int
    source: str
    height: int = 0  # frame size from the manifest (every frame of a clip has it)
    width: int = 0
    fps: float = 0.0  # frame rate of the stored frames (manifest)
    crc_offset: int = -1  # data offset of the ``.crc`` member (format v2); -1: none

    def frame_jpegs(self) -> list[bytes]:
        """Every frame's JPEG bytes, read straight from the tar with two ``pread`` calls."""
        fd = os.open(self.tar, os.O_RDONLY)
        try:
            off = np.frombuffer(os.pread(fd, 8 * (self.num_frames + 1), self.offsets_offset), dtype="<i8")
            mj = os.pread(fd, self.mjpeg_size, self.mjpeg_offset)
        finally:
            os.close(fd)
        return [mj[off[i]:off[i + 1]] for i in range(self.num_frames)]


@dataclass
class Split:
    """The shards of one split, in card order, and their samples in index order."""

    root: Path
    name: str
    tars: list[str]
    indexes: list[str]
    samples: list[SampleRef]
    card: dict
    damaged: dict[int, tuple[str, str]] = field(default_factory=dict)  # sample id -> (reason, detail)

    def shard_samples(self) -> list[int]:
        """Sample count of each shard, in card order."""
        return [s["samples"] for s in self.card["splits"][self.name]["shards"]]


def _check_header(fh, tar: Path, m: Member) -> None:
    """The tar header right before a member's data must carry the member's name."""
    head = os.pread(fh, 100, m.offset - BLOCK)
    name = head.split(b"\0", 1)[0].decode("utf-8", "replace")
    if name.startswith("././@LongLink"):
        return
    if name != m.name:
        raise ValueError(f"shard {tar}: its index says {m.name} starts at byte {m.offset}, "
                         f"the tar has '{name}' there (index does not match the tar)")


def _check_offsets(fh, tar: Path, members: dict[str, Member]) -> None:
    """The offsets table must start at 0, increase strictly and end at the mjpeg size."""
    m = members["offsets"]
    off = np.frombuffer(os.pread(fh, m.size, m.offset), dtype="<i8")
    size = members["mjpeg"].size
    if off[0] != 0 or off[-1] != size or np.any(np.diff(off) <= 0):
        raise ValueError(f"shard {tar}: sample {m.key} has inconsistent offsets "
                         f"(first {off[0]}, last {off[-1]}, mjpeg has {size} bytes, "
                         f"{int(np.sum(np.diff(off) <= 0))} empty or negative frames)")


def _sample_members(tar: Path, group: list[Member]) -> dict[str, Member]:
    members = {m.ext: m for m in group}
    missing = [c for c in COMPONENTS if c not in members]
    keys = {m.key for m in group}
    if missing or len(keys) != 1:
        raise ValueError(f"shard {tar}: sample {sorted(keys)} lacks {missing} or mixes keys")
    if members["offsets"].size % 8 or members["offsets"].size < 16:
        raise ValueError(f"shard {tar}: {members['offsets'].name} has {members['offsets'].size} bytes, "
                         "not a whole number (>= 2) of int64 offsets")
    return members


def _manifest(split_dir: Path) -> dict[str, dict]:
    path = split_dir / "manifest.parquet"
    if not path.is_file():
        raise ValueError(f"{path}: missing manifest")
    return {row["key"]: row for row in pq.read_table(path).to_pylist()}


def _sample_ref(tar: Path, members: dict[str, Member], manifest: dict[str, dict]) -> SampleRef:
    key = members["mjpeg"].key
    row = manifest.get(key)
    if row is None:
        raise ValueError(f"shard {tar}: sample {key} is not in the split's manifest.parquet")
    num_frames = members["offsets"].size // 8 - 1
    if row["num_frames"] != num_frames:
        raise ValueError(f"shard {tar}: sample {key} has {num_frames} offsets entries, "
                         f"the manifest says {row['num_frames']} frames (inconsistent offsets)")
    crc = members.get(CRC_EXT)
    return SampleRef(key, str(tar), members["mjpeg"].offset, members["mjpeg"].size,
                     members["offsets"].offset, num_frames, int(row["label_id"]), str(row.get("source") or ""),
                     int(row.get("height") or 0), int(row.get("width") or 0), fps=float(row.get("fps") or 0.0),
                     crc_offset=crc.offset if crc else -1)


def open_split(root: str | Path, split: str, verify_offsets: bool = True, rank: int = 0,
               world_size: int = 1, tolerant: bool = False) -> Split:
    """Read and check one split of a shard directory; ValueError naming the bad file.

    Sizes and indexes are checked for every shard; the tar headers and offsets tables (the
    reads that grow with the split) only for every ``world_size``-th shard from ``rank``, so
    that ranks starting together share that work. With ``tolerant``, damaged samples are listed
    in ``Split.damaged`` instead (see the module docstring); a missing or grown file still raises.
    """
    if protocol(str(root)):  # checked first: Path() would fold "s3://b" into "s3:/b"
        raise ValueError(f"shards {root}: the loader reads shards from a local or mounted directory, not a URL; "
                         "copy them (e.g. with `aws s3 sync`) or mount the bucket")
    root = Path(root)
    card = read_card(root)
    splits = card.get("splits", {})
    if split not in splits:
        raise ValueError(f"{root / 'dataset.json'}: no split '{split}' (has {sorted(splits)})")
    split_dir = root / split
    manifest = _manifest(split_dir)
    out = Split(root, split, [], [], [], card)
    for n, shard in enumerate(splits[split]["shards"]):
        tar, idx = split_dir / shard["tar"], split_dir / shard["index"]
        for path in (tar, idx):
            if not path.is_file():
                raise ValueError(f"shard {path}: listed in the dataset card but missing")
        size = tar.stat().st_size
        if size != shard["bytes"] and not (tolerant and size < shard["bytes"]):
            raise ValueError(f"shard {tar}: {size} bytes, the dataset card says "
                             f"{shard['bytes']} (truncated or rewritten tar)")
        groups = read_index(idx) if tolerant else check_index_against_tar(idx, tar)
        if len(groups) != shard["samples"] and not tolerant:
            raise ValueError(f"index {idx}: {len(groups)} samples, the dataset card says {shard['samples']}")
        check = verify_offsets and n % world_size == rank
        fh = os.open(tar, os.O_RDONLY)
        try:
            if tolerant:
                _add_shard_tolerant(out, tar, groups, manifest, fh, size, check, card_samples=shard["samples"])
            else:
                for group in groups:
                    members = _sample_members(tar, group)
                    if check:
                        _check_sample(fh, tar, members, False)
                    out.samples.append(_sample_ref(tar, members, manifest))
        finally:
            os.close(fh)
        out.tars.append(str(tar))
        out.indexes.append(str(idx))
    return out


def _check_sample(fh: int, tar: Path, members: dict[str, Member], v2: bool) -> None:
    """The tar headers before the members, the offsets table and (format v2) the checksum table's size."""
    for m in members.values():
        _check_header(fh, tar, m)
    _check_offsets(fh, tar, members)
    n = members["offsets"].size // 8 - 1
    if v2 and members.get(CRC_EXT) is None:
        raise ValueError(f"shard {tar}: sample {members['mjpeg'].key} has no .{CRC_EXT} member")
    if CRC_EXT in members and members[CRC_EXT].size != 4 * n:
        raise ValueError(f"shard {tar}: {members[CRC_EXT].name} has {members[CRC_EXT].size} bytes, "
                         f"expected 4 x {n} frames")


def _problem(exc: ValueError) -> tuple[str, str]:
    """(reason, detail) of a per-sample check's error."""
    text = str(exc)
    if "does not match" in text or "lacks" in text:
        return INDEX, text
    return (CRC_TABLE if f".{CRC_EXT}" in text else OFFSETS), text


def _add_shard_tolerant(out: Split, tar: Path, groups: list[list[Member]], manifest: dict[str, dict], fh: int,
                        size: int, check: bool, card_samples: int) -> None:
    """Append one shard's samples, listing the damaged ones instead of raising. When the index
    leaves samples out, the shard's samples follow the manifest's order (the tar's), the missing
    ones as placeholders, so every other sample keeps its id."""
    v2 = has_checksums(out.card)
    by_key = {}
    for group in groups:
        by_key.setdefault(group[0].key, group)
    keys = list(by_key)
    if len(groups) != card_samples or len(keys) != len(groups):
        keys = [k for k, row in manifest.items() if row["shard"] == tar.name]
    for key in keys:
        sid = len(out.samples)
        group = by_key.get(key)
        try:
            if group is None:
                raise ValueError(f"shard {tar}: sample {key} is not in the index (the index lacks it)")
            members = _sample_members(tar, group)
            ref = _sample_ref(tar, members, manifest)
        except ValueError as exc:
            if key not in manifest:
                raise
            out.samples.append(_placeholder(tar, key, manifest[key]))
            out.damaged[sid] = _problem(exc)
            continue
        out.samples.append(ref)
        beyond = [m for m in group if m.offset < BLOCK or m.offset + m.size > size]
        if beyond:
            out.damaged[sid] = (TRUNCATED, f"shard {tar}: {beyond[0].name} lies beyond the tar's {size} bytes")
            continue
        if check:
            try:
                _check_sample(fh, tar, members, v2)
            except ValueError as exc:
                out.damaged[sid] = _problem(exc)


def _placeholder(tar: Path, key: str, row: dict) -> SampleRef:
    """A sample the index does not locate: what the manifest says about it, no byte positions."""
    return SampleRef(key, str(tar), -1, 0, -1, int(row["num_frames"]), int(row["label_id"]),
                     str(row.get("source") or ""), int(row.get("height") or 0), int(row.get("width") or 0),
                     fps=float(row.get("fps") or 0.0))
