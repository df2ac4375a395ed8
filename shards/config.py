"""Settings of one sharding job (the ``shards`` component's config)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shards.storage import check_url, protocol

# Output settings that change the bytes written: a resumed job must use the same ones.
OUTPUT_SETTINGS = ("data", "fps", "size", "quality", "shard_mb", "max_per_shard", "min_frames", "limit")


@dataclass
class ShardsConfig:
    """What to read, how to encode it, and how to cut it into shards."""

    data: Literal["kinetics", "folder", "sample", "ucf101", "hmdb51"] = "sample"
    root: str | None = None
    out: str = "data/sample_shards"  # a local path or an fsspec URL (s3://bucket/prefix, gs://..., file://...)
    stage: str = ""  # remote OUT: where shards-stage-<hash of OUT> is made ("" : the system temp dir)
    csv: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # empty: every split found
    fps: float = 3.0  # output frame rate; 0 keeps the source rate (see README: bytes vs frames)
    size: int = 256  # short side in pixels
    quality: int = 90  # JPEG quality
    workers: int = 0  # 0: all cores
    shard_mb: float = 1024.0
    max_per_shard: int = 0  # 0: no limit
    min_frames: int = 8
    limit: int = 0  # first N clips of each split; 0: all
    engine: Literal["local", "ray"] = "local"  # where shard tasks run; never changes the output
    ray_address: str = ""  # ENGINE=ray: cluster to join; "" starts a local Ray instance
    max_retries: int = 3  # reruns of a task whose worker process (or Ray node) died
    decode_threads: int = 0  # FFmpeg decoder threads per worker; 0: cores / workers

    @property
    def threads_per_worker(self) -> int:
        """Decoder threads each worker uses."""
        return self.decode_threads or max(1, (os.cpu_count() or 1) // self.num_workers)

    def validate(self) -> None:
        """Raise ValueError naming the option for a value that cannot work."""
        checks = [
            (self.fps >= 0, f"FPS must be >= 0 (0 keeps the source rate), got {self.fps}"),
            (16 <= self.size <= 4096, f"SIZE must be in [16, 4096], got {self.size}"),
            (1 <= self.quality <= 100, f"QUALITY must be in [1, 100], got {self.quality}"),
            (self.workers >= 0, f"WORKERS must be >= 0, got {self.workers}"),
            (self.shard_mb > 0, f"SHARD_MB must be > 0, got {self.shard_mb}"),
            (self.max_per_shard >= 0, f"MAX_PER_SHARD must be >= 0, got {self.max_per_shard}"),
            (self.min_frames >= 1, f"MIN_FRAMES must be >= 1, got {self.min_frames}"),
            (self.decode_threads >= 0, f"DECODE_THREADS must be >= 0, got {self.decode_threads}"),
            (self.limit >= 0, f"LIMIT must be >= 0, got {self.limit}"),
            (self.data == "sample" or bool(self.root), f"DATA={self.data} needs ROOT"),
            (self.engine in ("local", "ray"), f"ENGINE must be 'local' or 'ray', got '{self.engine}'"),
            (self.engine == "ray" or not self.ray_address, "RAY_ADDRESS needs ENGINE=ray"),
            (self.max_retries >= 0, f"MAX_RETRIES must be >= 0, got {self.max_retries}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        scheme = protocol(self.root or "")
        if scheme:
            raise ValueError(f"ROOT {self.root}: remote paths ({scheme}://) are not supported; give a local "
                             "path (on a cluster: a shared file system mounted at the same path on every node)")
        check_url("OUT", self.out)
        if self.stage and protocol(self.stage):
            raise ValueError(f"STAGE {self.stage}: must be a local directory")

    @property
    def num_workers(self) -> int:
        """Worker processes to use."""
        return self.workers or (os.cpu_count() or 1)

    def output_settings(self) -> dict[str, Any]:
        """The settings that determine the output bytes (recorded and checked on resume)."""
        d = asdict(self)
        return {k: d[k] for k in OUTPUT_SETTINGS}
