"""One shard task: encode a fixed list of clips and write the shard, its index and stats.

A task writes ``<name>.tar.partial`` (hashing it as it goes: format v2 records every frame's
CRC-32 in a ``<key>.crc`` member and the SHA-256 of the tar and of its index in the stats), then
the index, renames the tar into place, and writes ``<name>.stats.json`` last. The stats file is
the "finished" marker: a shard without it is redone from scratch on resume, so a half-written
shard never looks finished. For a remote OUT the same files are written to the staging
directory and uploaded in that order (:meth:`shards.storage.Output.publish`), so the marker also arrives last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards import FORMAT_VERSION
from shards.encode import ClipRejected, EncodedClip, encode_clip
from shards.integrity import CRC_EXT, HashingWriter, frame_checksums
from shards.sources import Clip
from shards.storage import Output
from shards.tario import ShardTarWriter, index_text


@dataclass
class EncodeSettings:
    """What every clip of a job is encoded with."""

    size: int
    quality: int
    fps: float
    min_frames: int
    threads: int = 0  # decoder threads per worker; changes speed, never the output


@dataclass
class ShardTask:
    """A deterministic unit of work: one output shard from a fixed list of clips."""

    split: str
    name: str  # e.g. "train-000003"
    clips: list[Clip]
    settings: EncodeSettings
    label_ids: dict[str, int] = field(default_factory=dict)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sample_metadata(clip: Clip, enc: EncodedClip, label_id: int, settings: EncodeSettings) -> dict[str, Any]:
    """The ``<key>.json`` component of a sample."""
    return {
        "format_version": FORMAT_VERSION,
        "key": clip.key,
        "label": clip.label,
        "label_id": label_id,
        "split": clip.split,
        "source": clip.source,
        "youtube_id": clip.youtube_id,
        "time_start": clip.time_start,
        "time_end": clip.time_end,
        "fps": enc.fps,
        "num_frames": enc.num_frames,
        "width": enc.width,
        "height": enc.height,
        "quality": settings.quality,
        "source_fps": enc.source_fps,
        "source_frames": enc.source_frames,
        "source_width": enc.source_width,
        "source_height": enc.source_height,
        "source_codec": enc.source_codec,
        "source_rotation": enc.rotation,
    }


def run_shard(task: ShardTask, split_dir: Path, report: Callable[[dict], None]) -> dict[str, Any]:
    """Encode the task's clips and write its shard; returns the stats also saved to disk.

    ``report`` receives one event per clip: ``{"split", "ok", "bytes", "frames"}``.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    tar_path = split_dir / f"{task.name}.tar"
    partial = split_dir / f"{task.name}.tar.partial"
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    with open(partial, "wb") as fh:
        hashed = HashingWriter(fh)  # the shard digest, computed as the bytes go out
        writer = ShardTarWriter(hashed)
        for clip in task.clips:
            try:
                enc = encode_clip(clip.path, task.settings.size, task.settings.quality,
                                  task.settings.fps, task.settings.min_frames, threads=task.settings.threads)
            except ClipRejected as rej:
                rejects.append({"split": task.split, "key": clip.key, "source": clip.source,
                                "stage": rej.stage, "reason": rej.reason})
                report({"split": task.split, "ok": False, "bytes": 0, "frames": 0})
                continue
            label_id = task.label_ids.get(clip.label, -1)
            meta = sample_metadata(clip, enc, label_id, task.settings)
            writer.write(clip.key, {
                "mjpeg": enc.mjpeg,
                "offsets": enc.offsets.tobytes(),
                CRC_EXT: frame_checksums(enc.mjpeg, enc.offsets).tobytes(),  # right after the offsets
                "json": json.dumps(meta, sort_keys=True).encode(),
            })
            rows.append({
                "key": clip.key, "shard": f"{task.name}.tar", "label": clip.label, "label_id": label_id,
                "num_frames": enc.num_frames, "fps": enc.fps, "width": enc.width, "height": enc.height,
                "bytes": len(enc.mjpeg), "source": clip.source,
                "duration_s": enc.num_frames / enc.fps,
            })
            report({"split": task.split, "ok": True, "bytes": len(enc.mjpeg), "frames": enc.num_frames})
        writer.close()
        fh.flush()
        os.fsync(fh.fileno())
    index = index_text(writer.samples).encode()
    stats = {
        "shard": f"{task.name}.tar" if rows else None,
        "index": f"{task.name}.idx" if rows else None,
        "samples": len(rows),
        "clips": len(task.clips),
        "rejected": len(rejects),
        "frames": sum(r["num_frames"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "tar_bytes": partial.stat().st_size if rows else 0,
        "tar_sha256": hashed.hexdigest() if rows else None,
        "index_sha256": hashlib.sha256(index).hexdigest() if rows else None,
        "rows": rows,
        "rejects": rejects,
    }
    if rows:
        atomic_write(split_dir / f"{task.name}.idx", index)
        os.replace(partial, tar_path)
    else:
        partial.unlink()
    atomic_write(split_dir / f"{task.name}.stats.json", json.dumps(stats, indent=1).encode())
    return stats


def shard_files(split: str, name: str, stats: dict[str, Any]) -> list[str]:
    """A finished shard's files inside OUT, in upload order: data first, the stats marker last."""
    data = [f"{split}/{stats['shard']}", f"{split}/{stats['index']}"] if stats["samples"] else []
    return [*data, f"{split}/{name}.stats.json"]


def shard_is_finished(output: Output, split: str, name: str,
                      sizes: dict[str, int] | None = None) -> dict[str, Any] | None:
    """The stats of a finished shard in OUT, or None if it must be (re)done. ``sizes`` is a listing
    of the split's folder (:meth:`Output.sizes`), passed in to list a remote once per split."""
    sizes = output.sizes(split) if sizes is None else sizes
    if f"{name}.stats.json" not in sizes:
        return None
    try:
        stats = json.loads(output.read_bytes(f"{split}/{name}.stats.json") or b"")
    except (OSError, ValueError):
        return None
    if stats.get("samples") and "tar_sha256" not in stats:
        return None  # written in format v1: redone in this format
    whole = sizes.get(f"{name}.tar") == stats.get("tar_bytes") and f"{name}.idx" in sizes
    return stats if whole or not stats.get("samples") else None
