"""Decode the same frame sets from mp4s with each installed decoder: ``python -m tools.bench_video_decoders``.

Frame sets, drawn once per repeat (seeded) for every video under ``--root``: ``clip`` (F
consecutive frames at stride s, a random start, as the clip methods read) and ``triplet`` (the
T-CoRe sandwich: past, current, future with the default gap rule of ``pipeline.sampling``). Per
(set, decoder): delivered frames/s over a pass through all videos (one process, one decoder
thread asked for) and CPU ms per delivered frame (the process's, all threads: what bounds a
loader whose workers fill the cores), medians over ``--repeats`` passes (the decoders take turns within a pass, the order
rotated each repeat), decoded frames per delivered frame, and the largest pixel difference to
PyAV's frames (0: the same frames). Prints a table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

from pipeline.config import PipelineConfig
from pipeline.sampling import sample_triplet
from pipeline.video_decode import DECODERS, available_decoders, video_info


def frame_sets(videos: list[Path], rng: np.random.Generator, frames: int, stride: int) -> dict[str, list[list[int]]]:
    """Per set name, one sorted list of distinct frame numbers per video."""
    cfg = PipelineConfig()
    clips, triplets = [], []
    for v in videos:
        t = video_info(str(v))[0]
        span = min((frames - 1) * stride, t - 1)
        start = int(rng.integers(0, t - span))
        clips.append(sorted({min(start + i * stride, t - 1) for i in range(frames)}))
        triplets.append(sorted(set(sample_triplet(t, rng, cfg.sampling, cfg.gap_min, cfg.gap_max))))
    return {f"clip {frames}x{stride}": clips, "triplet": triplets}


def whole(path: Path) -> bool:
    """True when the video opens and decodes to as many frames as its container says (the sample
    tree holds broken and truncated files on purpose; they are left out)."""
    try:
        count = video_info(str(path))[0]
        with av.open(str(path)) as container:
            return count > 0 and sum(1 for _ in container.decode(video=0)) == count
    except (av.error.FFmpegError, IndexError, ValueError):
        return False


def run(videos: list[Path], decoders: list[str], repeats: int, frames: int, stride: int, seed: int) -> dict:
    """{set: {decoder: {frames_per_s, decoded_per_delivered, max_abs_diff_to_pyav}}}."""
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    decoded: dict[tuple[str, str], int] = {}
    diff: dict[tuple[str, str], int] = {}
    delivered: dict[str, int] = {}
    for r in range(repeats):
        sets = frame_sets(videos, np.random.default_rng((seed, r)), frames, stride)
        order = decoders[r % len(decoders):] + decoders[:r % len(decoders)]
        for name, wanted in sets.items():
            delivered[name] = delivered.get(name, 0) + sum(map(len, wanted))
            pixels = {}
            for dec in order:
                fn = DECODERS[dec][1]
                t0, c0 = time.perf_counter(), time.process_time()
                got = [fn(v, w) for v, w in zip(videos, wanted)]
                n = sum(map(len, wanted))
                rates.setdefault((name, dec), []).append(n / (time.perf_counter() - t0))
                cpu.setdefault((name, dec), []).append((time.process_time() - c0) * 1e3 / n)
                decoded[(name, dec)] = decoded.get((name, dec), 0) + sum(n for _, n in got)
                pixels[dec] = [x for x, _ in got]
            for dec in order:
                d = (max(int((a.int() - b.int()).abs().max()) for a, b in zip(pixels[dec], pixels["pyav"]))
                     if "pyav" in pixels else -1)
                diff[(name, dec)] = max(diff.get((name, dec), 0), d)
    out: dict[str, dict] = {}
    for (name, dec), rs in rates.items():
        out.setdefault(name, {})[dec] = {"frames_per_s": statistics.median(rs),
                                         "cpu_ms_per_frame": statistics.median(cpu[(name, dec)]),
                                         "decoded_per_delivered": decoded[(name, dec)] / delivered[name],
                                         "max_abs_diff_to_pyav": diff[(name, dec)]}
    return out


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['videos']} videos, {report['repeats']} repeats, medians")
    for col in ("frame set", "decoder", "frames/s", "× pyav", "CPU ms/frame", "decoded/delivered", "max |Δ| to pyav"):
        table.add_column(col, justify="left" if col in ("frame set", "decoder") else "right")
    for name, decs in report["sets"].items():
        base = decs.get("pyav", {}).get("frames_per_s")
        for dec, r in sorted(decs.items(), key=lambda kv: -kv[1]["frames_per_s"]):
            table.add_row(name, dec, f"{r['frames_per_s']:.0f}", f"{r['frames_per_s'] / base:.2f}" if base else "",
                          f"{r['cpu_ms_per_frame']:.2f}",
                          f"{r['decoded_per_delivered']:.2f}", str(r["max_abs_diff_to_pyav"]))
    Console().print(table)
    for name, why in report["skipped"].items():
        Console().print(f"  {name} skipped: {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_video_decoders", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/sample_kinetics", help="a directory of mp4s (searched recursively)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    videos = [v for v in sorted(Path(args.root).rglob("*.mp4")) if whole(v)]
    if not videos:
        print(f"error: no readable mp4 under {args.root}", file=sys.stderr)
        return 2
    decoders = available_decoders()
    skipped = {d: f"python module '{DECODERS[d][0]}' not importable" for d in DECODERS if d not in decoders}
    report = {"root": args.root, "videos": len(videos), "repeats": args.repeats, "skipped": skipped,
              "sets": run(videos, decoders, args.repeats, args.frames, args.stride, args.seed)}
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
