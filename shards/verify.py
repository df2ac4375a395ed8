"""``inspect --verify`` and ``--verify --quick``: every bad frame of a shard set, named.

``--verify`` streams every tar from its first byte to its last (so a URL works too), hashing it
as it goes. Each member is compared with the shard's index; members are grouped into samples;
each sample must have all its members, offsets that partition its ``.mjpeg``, JSON agreeing with
the manifest, and every frame must match its CRC-32 (format v2) and decode cleanly with
libjpeg-turbo (a warning such as "Corrupt JPEG data: premature end of data segment" counts as an
error). Then the tar's size and SHA-256 are compared with the dataset card, and index entries the
tar did not hold are reported. Nothing stops at the first problem.

``--quick`` only hashes each tar and compares size and SHA-256 with the card: I/O-bound, for a
freshly copied set. Format v1 has no digests: ``--quick`` then compares sizes only.

Each problem is a row (split, shard, key, frame, reason, detail); an empty frame means the whole
sample, an empty key the whole shard. Reasons are the constants of shards/integrity.py.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import tarfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from shards.integrity import (
    CRC_EXT,
    DIGEST,
    INDEX,
    METADATA,
    MISSING,
    SHARD_DIGEST,
    TRUNCATED,
    UNREADABLE,
    HashingReader,
    check_frames,
    file_digest,
)
from shards.storage import Output
from shards.tario import parse_index

DETAIL_CHARS = 400  # a row's detail stops growing past this


@dataclass(frozen=True)
class ShardJob:
    """One shard to check: picklable, so it can run in a worker process."""

    output: Output
    split: str
    shard: dict[str, Any]  # its entry in the dataset card
    rows: dict[str, dict[str, Any]]  # manifest rows of its samples, by key
    checksums: bool  # format v2: frame CRC-32 members and a shard SHA-256 to check
    quick: bool = False


@dataclass
class ShardResult:
    """What checking one shard found."""

    samples: int = 0
    frames: int = 0
    bytes: int = 0
    keys: set[str] = field(default_factory=set)  # sample keys the tar or its index named
    problems: list[dict[str, Any]] = field(default_factory=list)
    _rows: dict[tuple, dict[str, Any]] = field(default_factory=dict)

    def add(self, job: ShardJob, key: str | None, frame: int | None, reason: str, detail: str) -> None:
        """Record a problem: one row per (key, frame, reason), later details appended to it."""
        row = self._rows.get((key, frame, reason))
        if row is None:
            row = self._rows[key, frame, reason] = {"split": job.split, "shard": job.shard["tar"], "key": key,
                                                     "frame": frame, "reason": reason, "detail": detail}
            self.problems.append(row)
        elif detail not in row["detail"] and len(row["detail"]) < DETAIL_CHARS:
            row["detail"] += f"; {detail}"


def check_sample(job: ShardJob, result: ShardResult, key: str, parts: dict[str, bytes]) -> None:
    """Check one sample's members against each other and the manifest, then every frame."""
    required = ("mjpeg", "offsets", "json") + ((CRC_EXT,) if job.checksums else ())
    missing = [ext for ext in required if ext not in parts]
    if missing:
        result.add(job, key, None, MISSING, "no " + ", ".join(f"{key}.{ext}" for ext in missing) + " in the tar")
    row = job.rows.get(key)
    if row is None:
        result.add(job, key, None, METADATA, "the sample is not in the split's manifest")
    if "mjpeg" not in parts or "offsets" not in parts:
        return
    size = (row["width"], row["height"]) if row else None
    frames, problems = check_frames(parts["mjpeg"], parts["offsets"], parts.get(CRC_EXT) if job.checksums else None,
                                    size)
    result.samples += 1
    result.frames += frames
    for frame, reason, detail in problems:
        result.add(job, key, frame, reason, detail)
    if row and "json" in parts:
        _check_json(job, result, key, parts["json"], row, frames)


def _check_json(job: ShardJob, result: ShardResult, key: str, data: bytes, row: dict, frames: int) -> None:
    try:
        meta = json.loads(data)
    except ValueError as exc:
        result.add(job, key, None, METADATA, f"{key}.json is not valid JSON ({exc})")
        return
    for name, expect in (("key", key), ("num_frames", row["num_frames"]), ("label", row["label"]),
                         ("width", row["width"]), ("height", row["height"])):
        if meta.get(name) != expect:
            result.add(job, key, None, METADATA, f"{key}.json says {name}={meta.get(name)!r}, the manifest {expect!r}")
            return
    if frames and frames != row["num_frames"]:
        result.add(job, key, None, METADATA, f"{frames} frames in the tar, the manifest says {row['num_frames']}")


def _index_bytes(job: ShardJob, result: ShardResult) -> bytes | None:
    """The shard's index file, checked against its SHA-256 in the card (format v2); None if missing."""
    data = job.output.read_bytes(f"{job.split}/{job.shard['index']}")
    if data is None:
        result.add(job, None, None, MISSING, f"the index {job.shard['index']} is missing")
        return None
    recorded = job.shard.get(f"index_{SHARD_DIGEST}") if job.checksums else None
    digest = hashlib.sha256(data).hexdigest()
    if recorded and digest != recorded:
        result.add(job, None, None, DIGEST, f"index {job.shard['index']}: sha256 {digest[:16]}..., the dataset "
                                            f"card says {recorded[:16]}...")
    return data


def _read_index(job: ShardJob, result: ShardResult) -> dict[str, tuple[int, int]] | None:
    """Member name -> (data offset, size) from the shard's index; None (and a problem) if unusable."""
    rel = f"{job.split}/{job.shard['index']}"
    data = _index_bytes(job, result)
    if data is None:
        return None
    try:
        index = parse_index(data.decode("utf-8", "replace"), job.output.display(rel))
    except ValueError as exc:
        result.add(job, None, None, INDEX, str(exc))
        return None
    return {m.name: (m.offset, m.size) for sample in index for m in sample}


class _Walk:
    """The members of one tar in order, grouped into samples; each sample is checked once whole."""

    def __init__(self, job: ShardJob, result: ShardResult, expected: dict[str, tuple[int, int]] | None):
        self.job, self.result, self.expected = job, result, expected
        self.key: str | None = None
        self.parts: dict[str, bytes] = {}

    def member(self, m: tarfile.TarInfo, data: bytes) -> None:
        key, _, ext = m.name.partition(".")
        self.result.keys.add(key)
        if self.expected is not None:
            want = self.expected.pop(m.name, None)
            if want is None:
                self.result.add(self.job, key, None, INDEX,
                                f"the tar holds {m.name} (byte {m.offset_data}), the index does not list it")
            elif want != (m.offset_data, m.size):
                self.result.add(self.job, key, None, INDEX,
                                f"the index puts {m.name} at byte {want[0]} ({want[1]} bytes), the tar at byte "
                                f"{m.offset_data} ({m.size} bytes)")
        if key != self.key:
            self.flush()
            self.key, self.parts = key, {}
        self.parts[ext] = data

    def flush(self, broken: bool = False) -> None:
        """Check the sample gathered so far; after a read error, only if the index says it is whole."""
        key, self.key = self.key, None
        if key is None:
            return
        if broken and self.expected and any(n.partition(".")[0] == key for n in self.expected):
            return  # cut off: reported with the index entries the tar did not hold
        check_sample(self.job, self.result, key, self.parts)


def verify_shard(job: ShardJob) -> ShardResult:
    """Check one shard completely (or, with ``job.quick``, its size and digest only)."""
    if job.quick:
        return quick_shard(job)
    result = ShardResult()
    expected = _read_index(job, result)
    try:
        fh = job.output.open_read(f"{job.split}/{job.shard['tar']}")
    except FileNotFoundError:
        result.add(job, None, None, MISSING, "the tar is missing")
        return result
    walk, broken = _Walk(job, result, expected), ""
    with fh:
        reader = HashingReader(fh)
        try:
            with tarfile.open(fileobj=reader, mode="r|", ignore_zeros=True) as tar:
                for m in tar:
                    if m.isfile():
                        walk.member(m, tar.extractfile(m).read())
        except tarfile.TarError as exc:
            broken = str(exc) or type(exc).__name__
        walk.flush(broken=bool(broken))
        reader.drain()
    result.bytes = reader.count
    leftover = expected or {}
    short = reader.count < job.shard["bytes"]
    cut = short and (bool(broken) or any(offset + size > reader.count for offset, size in leftover.values()))
    _compare_with_card(job, result, reader.count, reader.hexdigest(), cut)
    if broken and not short:
        result.add(job, None, None, UNREADABLE, f"the tar cannot be read to its end ({broken})")
    for name, (offset, size) in leftover.items():
        key = name.partition(".")[0]
        result.keys.add(key)
        if offset + size > reader.count:
            result.add(job, key, None, TRUNCATED, f"{name} ends at byte {offset + size}, the tar has {reader.count}")
        else:
            result.add(job, key, None, MISSING, f"the index lists {name} at byte {offset}; the tar holds no "
                                                "readable member of that name (damaged tar header?)")
    if not result.problems and result.samples != job.shard["samples"]:
        result.add(job, None, None, METADATA, f"{result.samples} samples in the tar, the card says "
                                              f"{job.shard['samples']}")
    return result


def quick_shard(job: ShardJob) -> ShardResult:
    """Hash one tar and compare its size and SHA-256 with the card."""
    result = ShardResult()
    _index_bytes(job, result)
    try:
        with job.output.open_read(f"{job.split}/{job.shard['tar']}") as fh:
            digest, size = file_digest(fh)
    except FileNotFoundError:
        result.add(job, None, None, MISSING, "the tar is missing")
        return result
    result.bytes = size
    _compare_with_card(job, result, size, digest, cut=True)
    return result


def _compare_with_card(job: ShardJob, result: ShardResult, size: int, digest: str, cut: bool) -> None:
    """Size and SHA-256 against the card; ``cut``: the tar is known to end early (``--quick`` cannot
    tell, so a short tar counts as truncated there)."""
    want = job.shard["bytes"]
    recorded = job.shard.get(SHARD_DIGEST) if job.checksums else None
    if size < want and (cut or job.quick or not recorded):
        result.add(job, None, None, TRUNCATED, f"{size} bytes, the dataset card says {want}")
    elif recorded and digest != recorded:
        extra = f"; {size} bytes, the card says {want}" if size != want else ""
        result.add(job, None, None, DIGEST, f"sha256 {digest[:16]}..., the dataset card says {recorded[:16]}...{extra}")
    elif size != want:
        result.add(job, None, None, METADATA, f"{size} bytes, the dataset card says {want}")


def sizes_only(jobs: list[ShardJob]) -> list[ShardResult]:
    """Format v1 ``--quick``: each tar's size (one listing per split) against the card."""
    listings: dict[str, dict[str, int]] = {}
    results = []
    for job in jobs:
        if job.split not in listings:
            listings[job.split] = job.output.sizes(job.split)
        sizes = listings[job.split]
        result = ShardResult()
        if job.shard["tar"] not in sizes:
            result.add(job, None, None, MISSING, "the tar is missing")
        else:
            result.bytes = sizes[job.shard["tar"]]
            _compare_with_card(job, result, result.bytes, "", cut=True)
        results.append(result)
    return results


def run_jobs(jobs: list[ShardJob], workers: int,
             done: Callable[[ShardJob, ShardResult], None]) -> list[ShardResult]:
    """Run every job (in ``workers`` spawned processes when > 1), calling ``done`` as each ends;
    returns the results in job order."""
    results: dict[int, ShardResult] = {}
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = verify_shard(job)
            done(job, results[i])
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(verify_shard, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                done(jobs[i], results[i])
    return [results[i] for i in range(len(jobs))]
