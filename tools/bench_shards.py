"""``make bench-shards``: throughput of the sharder against plain baselines, and bytes vs quality.

In one run, on the same clips (the sample collection's decodable clips, repeated):
Every method uses one decoder thread per process, so "per worker" means per core.
- plain loop: one process decodes, resizes and JPEG-encodes every clip exactly as the sharder
  does and writes nothing; the sharder's own overhead is the difference to WORKERS=1;
- the sharder with 1 worker and with all workers (whole jobs, planning included);
- the common practice: ``ffmpeg`` re-encoding each clip to 256-short-side H.264, one process;
- bytes per clip-second and PSNR against the resized source frames for a grid of fps/quality;
- what format v2's checksums cost: the CPU time of the per-frame CRC-32 and the per-shard SHA-256
  (timed on the WORKERS=1 output held in memory) as a share of the WORKERS=1 job, and the bytes
  the ``.crc`` members add to the tars; and how fast ``inspect --verify`` (every checksum, every
  frame decoded, one process) and ``--verify --quick`` (digests only) check that output.
Figures are medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from shards.card import read_card
from shards.config import ShardsConfig
from shards.encode import ClipRejected, encode_clip
from shards.inspect import verify
from shards.integrity import frame_checksums
from shards.job import run_job
from shards.sample import build_sample
from shards.sources import discover
from shards.tario import BLOCK, read_index


def bench_clips(sample_root: Path, work: Path, copies: int) -> Path:
    """A folder-layout tree with ``copies`` links to each decodable sample clip."""
    tree = work / "clips"
    for split in discover("kinetics", str(sample_root), [], [], 0):
        for clip in split.clips:
            try:
                encode_clip(clip.path, 64, 50, 1.0, 1)
            except ClipRejected:
                continue
            for c in range(copies):
                dst = tree / "train" / (clip.label or "unlabelled") / f"{clip.key}_{c}.mp4"
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.abspath(clip.path), dst)
    return tree


def plain_loop(paths: list[str], cfg: ShardsConfig) -> tuple[float, int]:
    """Seconds and encoded bytes for decode+resize+encode of every clip in one process."""
    t = time.perf_counter()
    total = sum(len(encode_clip(p, cfg.size, cfg.quality, cfg.fps, 1, threads=1).mjpeg) for p in paths)
    return time.perf_counter() - t, total


def sharder(tree: Path, out: Path, cfg: ShardsConfig, workers: int) -> float:
    """Seconds for a whole sharding job (fresh output) with ``workers`` processes."""
    shutil.rmtree(out, ignore_errors=True)
    job = ShardsConfig(data="folder", root=str(tree), out=str(out), fps=cfg.fps, size=cfg.size,
                       quality=cfg.quality, workers=workers, max_per_shard=cfg.max_per_shard,
                       decode_threads=1)
    splits = discover("folder", str(tree), [], [], 0)
    t = time.perf_counter()
    run_job(job, splits, console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    return time.perf_counter() - t


def ffmpeg_loop(paths: list[str], out: Path, size: int) -> tuple[float, int]:
    """Seconds and bytes for re-encoding every clip to short-side-``size`` H.264 with ffmpeg."""
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    total = 0
    for i, p in enumerate(paths):
        dst = out / f"{i}.mp4"
        scale = f"scale='if(lt(iw,ih),{size},-2)':'if(lt(iw,ih),-2,{size})'"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-threads", "1", "-i", p, "-vf", scale, "-an",
                        "-c:v", "libx264", "-preset", "medium", "-crf", "23", str(dst)], check=True)
        total += dst.stat().st_size
    return time.perf_counter() - t, total


def quality_grid(paths: list[str], size: int) -> list[dict]:
    """KB per clip-second and PSNR (vs the resized source) for several fps/quality settings."""
    rows = []
    for quality in (95, 90, 85, 80, 75):
        psnrs, kb, secs = [], 0.0, 0.0
        for p in paths:
            clip = encode_clip(p, size, quality, 0, 1)
            with av.open(p) as c:
                ref = [f.reformat(width=clip.width, height=clip.height, format="rgb24",
                                  interpolation="BICUBIC").to_ndarray() for f in c.decode(video=0)]
            for i in range(0, clip.num_frames, 5):
                got = np.asarray(Image.open(io.BytesIO(clip.mjpeg[clip.offsets[i]:clip.offsets[i + 1]])).convert("RGB"))
                mse = float(np.mean((got.astype(np.float64) - ref[i]) ** 2))
                psnrs.append(10 * np.log10(255**2 / max(mse, 1e-9)))
            kb += len(clip.mjpeg) / 1000 / clip.num_frames
            secs += 1
        per_frame = kb / secs
        rows.append({"quality": quality, "kb_per_frame": per_frame, "psnr_db": statistics.median(psnrs),
                     **{f"kb_per_s_at_{f}fps": per_frame * f for f in (2, 3, 4, 8)}})
    return rows


def checksum_costs(out: Path) -> dict[str, float]:
    """CPU seconds of format v2's checksums on a finished output (tars read into memory first, so
    only hashing is timed), and the bytes its ``.crc`` members take in the tars."""
    card = read_card(out)
    crc_s = sha_s = 0.0
    tar_bytes = crc_bytes = frames = 0
    for split, s in card["splits"].items():
        for shard in s["shards"]:
            tar = out / split / shard["tar"]
            data, index = tar.read_bytes(), (out / split / shard["index"]).read_bytes()
            t = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hashlib.sha256(index).hexdigest()
            sha_s += time.perf_counter() - t
            tar_bytes += len(data)
            for sample in read_index(out / split / shard["index"]):
                m = {x.ext: x for x in sample}
                offsets = np.frombuffer(data[m["offsets"].offset:m["offsets"].offset + m["offsets"].size], "<i8")
                mjpeg = data[m["mjpeg"].offset:m["mjpeg"].offset + m["mjpeg"].size]
                t = time.perf_counter()
                frame_checksums(mjpeg, offsets)
                crc_s += time.perf_counter() - t
                frames += len(offsets) - 1
                crc_bytes += BLOCK + -(-m["crc"].size // BLOCK) * BLOCK  # its header and its padded data
    return {"crc_s": crc_s, "sha256_s": sha_s, "tar_bytes": tar_bytes, "crc_member_bytes": crc_bytes,
            "frames": frames}


def verify_speed(out: Path) -> dict[str, float]:
    """Seconds of ``inspect --verify`` (one process) and ``--verify --quick`` on a finished output."""
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    verify(str(out), quiet, workers=1)  # warm-up: imports the decoder, fills the page cache
    t = time.perf_counter()
    assert not verify(str(out), quiet, workers=1)
    full = time.perf_counter() - t
    t = time.perf_counter()
    assert not verify(str(out), quiet, quick=True, workers=1)
    return {"verify_s": full, "quick_s": time.perf_counter() - t}


def integrity_table(costs: list[dict], speeds: list[dict], sharder_s: float) -> Table:
    """The checksum rows of the bench (medians over repeats)."""
    med = {k: statistics.median(c[k] for c in costs) for k in costs[0]}
    fast = {k: statistics.median(v[k] for v in speeds) for k in speeds[0]}
    t = Table(title="format v2 checksums: cost in the sharder, and verification speed (median)")
    for col in ("what", "figure"):
        t.add_column(col, justify="left" if col == "what" else "right")
    t.add_row("CRC-32 of every frame", f"{med['crc_s'] * 1e3:.1f} ms "
              f"({med['tar_bytes'] / max(med['crc_s'], 1e-9) / 1e9:.1f} GB/s)")
    t.add_row("SHA-256 of every tar and index", f"{med['sha256_s'] * 1e3:.1f} ms")
    t.add_row("both, share of the WORKERS=1 job", f"{(med['crc_s'] + med['sha256_s']) / sharder_s:.3%}")
    t.add_row(".crc members, share of tar bytes", f"{med['crc_member_bytes'] / med['tar_bytes']:.3%} "
              f"({med['crc_member_bytes'] / 2**10:.0f} of {med['tar_bytes'] / 2**20:.1f} MiB)")
    t.add_row("inspect --verify, 1 process", f"{med['frames'] / fast['verify_s']:.0f} frames/s, "
              f"{med['tar_bytes'] / 2**20 / fast['verify_s']:.1f} MiB/s")
    t.add_row("inspect --verify --quick, 1 process", f"{med['tar_bytes'] / 2**20 / fast['quick_s']:.0f} MiB/s")
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_shards", description=__doc__.splitlines()[0])
    p.add_argument("--sample-root", default="data/sample_kinetics")
    p.add_argument("--copies", type=int, default=10, help="links to each sample clip (more clips, steadier rates)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    console = Console()
    cfg = ShardsConfig(max_per_shard=8)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = bench_clips(build_sample(a.sample_root), work, a.copies)
        paths = sorted(str(x) for x in tree.rglob("*.mp4"))
        real = [str(x) for x in sorted(Path(a.sample_root).rglob("*.mp4")) if "train" in x.parts and
                any(k in x.parent.name.replace("_", " ") for k in ("riding a bike", "animated animals", "talking on phone"))]
        results: dict[str, list[float]] = {"plain": [], "sharder_1": [], f"sharder_{workers}": [], "ffmpeg": []}
        out_bytes = 0
        costs, speeds = [], []
        for r in range(a.repeats):
            console.print(f"repeat {r + 1}/{a.repeats} on {len(paths)} clips")
            secs, out_bytes = plain_loop(paths, cfg)
            results["plain"].append(secs)
            results["sharder_1"].append(sharder(tree, work / "o1", cfg, 1))
            costs.append(checksum_costs(work / "o1"))
            speeds.append(verify_speed(work / "o1"))
            results[f"sharder_{workers}"].append(sharder(tree, work / "oN", cfg, workers))
            if shutil.which("ffmpeg"):
                unique = paths[:: a.copies]
                secs, _ = ffmpeg_loop(unique, work / "ff", cfg.size)
                results["ffmpeg"].append(secs * len(paths) / len(unique))
        grid = quality_grid(real, cfg.size)
    n = len(paths)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    table = Table(title=f"sharding {n} clips, fps={cfg.fps:g}, size={cfg.size}, quality={cfg.quality} (median of {a.repeats})")
    for col in ("method", "clips/s", "MB/s out", "vs plain loop"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for k, secs in med.items():
        table.add_row(k, f"{n / secs:.2f}", f"{out_bytes / 2**20 / secs:.2f}", f"{med['plain'] / secs:.2f}x")
    console.print(table)
    scaling = med["sharder_1"] / med[f"sharder_{workers}"]
    console.print(f"sharder WORKERS=1 / plain loop: {med['plain'] / med['sharder_1']:.2f}x (target >= 0.9); "
                  f"WORKERS={workers} / WORKERS=1: {scaling:.2f}x (target >= 1.8 at 2 workers)")
    g = Table(title="bytes vs quality (real clips, 256 short side; PSNR vs resized source)")
    for col in ("quality", "KB/frame", "PSNR dB", "KB/clip-s @2fps", "@3fps", "@4fps", "@8fps"):
        g.add_column(col, justify="right")
    for row in grid:
        g.add_row(str(row["quality"]), f"{row['kb_per_frame']:.1f}", f"{row['psnr_db']:.1f}",
                  *(f"{row[f'kb_per_s_at_{f}fps']:.0f}" for f in (2, 3, 4, 8)))
    console.print(g)
    console.print(integrity_table(costs, speeds, med["sharder_1"]))
    if a.json:
        Path(a.json).write_text(json.dumps({"clips": n, "seconds_median": med, "grid": grid, "workers": workers,
                                            "checksums": costs, "verify": speeds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
