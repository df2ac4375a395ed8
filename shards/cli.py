"""Command line of the sharder (``python -m shards`` / ``make shards``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from rich.console import Console
from rich.table import Table

from shards.action_sources import ACTION_DATA, discover_action, write_action_tables
from shards.card import unused_files
from shards.config import ShardsConfig
from shards.job import run_job
from shards.sample import build_sample
from shards.sources import discover
from shards.storage import Output

DEFAULT_SAMPLE_ROOT = "data/sample_kinetics"
ACTION_FPS, ACTION_SIZE = 0.0, 128  # UCF101/HMDB51 defaults: every source frame, 128 short side (128x171 clips)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _csv_list(text: str) -> list[str]:
    return [s for s in (p.strip() for p in text.split(",")) if s]


def parse_args(argv: list[str] | None) -> ShardsConfig:
    """Flags -> a validated ShardsConfig (ValueError on a bad value)."""
    d = ShardsConfig()
    p = _Parser(prog="python -m shards", description="Video collection -> frame-indexed WebDataset shards.")
    p.add_argument("--data", choices=["kinetics", "folder", "sample", *ACTION_DATA], default=d.data)
    p.add_argument("--root", default=None, help="collection root (DATA=sample: where the sample tree is built)")
    p.add_argument("--out", default=d.out, help="local path or fsspec URL (file://, s3://, gs://, ...)")
    p.add_argument("--stage", default=d.stage,
                   help="remote OUT: local directory in which shards are staged before upload, in "
                        "shards-stage-<hash of OUT> (default: the system temp dir)")
    p.add_argument("--csv", type=_csv_list, default=[], help="annotation CSV(s), comma separated")
    p.add_argument("--splits", type=_csv_list, default=[], help="splits to shard (default: all found)")
    p.add_argument("--fps", type=float, default=None,
                   help=f"output frame rate; 0 keeps the source rate (default {d.fps:g}; ucf101/hmdb51: {ACTION_FPS:g})")
    p.add_argument("--size", type=int, default=None,
                   help=f"short side in pixels (default {d.size}; ucf101/hmdb51: {ACTION_SIZE})")
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0: all cores)")
    p.add_argument("--shard-mb", type=float, default=d.shard_mb, help="target shard size in MB")
    p.add_argument("--max-per-shard", type=int, default=d.max_per_shard, help="at most this many clips a shard")
    p.add_argument("--min-frames", type=int, default=d.min_frames, help="reject clips with fewer output frames")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="FFmpeg decoder threads per worker (0: cores / workers)")
    p.add_argument("--limit", type=int, default=d.limit, help="first N clips of each split (0: all)")
    p.add_argument("--engine", choices=["local", "ray"], default=d.engine, help="where shard tasks run")
    p.add_argument("--ray-address", default=None,
                   help="ENGINE=ray: cluster to join (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="reruns of a shard task whose worker process (or Ray node) died")
    a = p.parse_args(argv)
    action = a.data in ACTION_DATA
    if a.fps is None:
        a.fps = ACTION_FPS if action else d.fps
    if a.size is None:
        a.size = ACTION_SIZE if action else d.size
    if action and a.splits:
        raise ValueError(f"SPLITS: DATA={a.data} shards every video once and records all three official "
                         "splits in split_roles.parquet; leave SPLITS empty")
    if a.ray_address is None:
        a.ray_address = os.environ.get("RAY_ADDRESS", "") if a.engine == "ray" else ""
    cfg = ShardsConfig(
        data=a.data, root=a.root, out=a.out, stage=a.stage, csv=a.csv, splits=a.splits, fps=a.fps, size=a.size,
        quality=a.quality, workers=a.workers, shard_mb=a.shard_mb, max_per_shard=a.max_per_shard,
        min_frames=a.min_frames, limit=a.limit, decode_threads=a.decode_threads, engine=a.engine,
        ray_address=a.ray_address, max_retries=a.max_retries,
    )
    if cfg.data == "sample" and not cfg.root:
        cfg.root = DEFAULT_SAMPLE_ROOT
    cfg.validate()
    return cfg


def summary_table(card: dict) -> Table:
    """Per-split figures of a finished job."""
    t = Table(title="shards")
    for col in ("split", "samples", "shards", "missing", "rejected", "frames", "hours", "MB", "KB/clip-s"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, s in card["splits"].items():
        kbps = s["bytes"] / 1000 / s["seconds"] if s["seconds"] else 0.0
        t.add_row(split, str(s["samples"]), str(len(s["shards"])), str(s["missing"]), str(s["rejected"]),
                  str(s["frames"]), f"{s['seconds'] / 3600:.3f}", f"{s['bytes'] / 2**20:.1f}", f"{kbps:.0f}")
    return t


def main(argv: list[str] | None = None) -> int:
    """Run a sharding job; returns the exit code."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 140
    try:
        cfg = parse_args(argv)
        if cfg.data == "sample":
            build_sample(cfg.root)
        action = discover_action(cfg.data, cfg.root, cfg.limit) if cfg.data in ACTION_DATA else None
        if action is not None:
            splits = [action.sources]
        else:
            splits = discover("kinetics" if cfg.data == "sample" else cfg.data, cfg.root, cfg.csv, cfg.splits, cfg.limit)
        if not splits:
            raise ValueError(f"ROOT {cfg.root}: no splits found")
        card = run_job(cfg, splits, console=console)
        if action is not None:
            write_action_tables(Output.open(cfg.out, cfg.stage), action)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            print(f"error: disk full while writing {exc.filename or cfg.out} ({os.strerror(exc.errno)}); free "
                  "space and re-run the same command to resume", file=sys.stderr)
            return 1
        raise
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    run = card["_run"]
    output = Output.open(cfg.out)
    console.print(summary_table(card))
    rejected = sum(s["rejected"] for s in card["splits"].values())
    missing = sum(s["missing"] for s in card["splits"].values())
    unused = sum(unused_files(s) for s in card["splits"].values())
    console.print(
        f"{run['elapsed_s']:.1f}s with {run['workers']} workers ({run['skipped_shards']} shards already done); "
        f"{rejected} rejected (see {output.display('rejected.parquet')}), {missing} listed but missing "
        f"(see {output.display('missing.parquet')})"
        + (f", {unused} files on disk not used (see {output.display('skipped.parquet')})" if unused else "")
        + f"; shards in {cfg.out}"
    )
    return 0
