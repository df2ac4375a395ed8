"""Profile the triplet loaders on one shard directory: ``python -m tools.profile_loader --shards DIR``.

For each workload (``tcore``: the full T-CoRe view set; ``simple``: one random-resized crop per
frame; ``dualvar``, ``cstp``, ``localglobal``: a clip method's clips, where a "triplet" below is
one sample, its clips, and the ``dali``, ``dali-range``, ``torch`` and ``mp4`` loaders run:
``pipeline.clip_reference``) and each loader (``dali``, ``dali-range``, ``dali-host``, ``dali-host-whole``, ``torch``,
``mp4``, ``ffcv``), after warm-up:
triplets/s and frames/s (median of repeats), decoded frames per delivered frame, first-batch
latency, CPU utilisation (share of all cores, the loader's process tree), CPU milliseconds per
triplet (the figure that other jobs on a shared machine disturb least), peak RSS, bytes read
per triplet; plus the decode ceiling (this machine decoding the shards' JPEGs alone, ÷ 3) and
each loader as a fraction of it, and the DALI loaders' speed ratios to the others in the same
run (``ratios``). Prints a table, writes ``--json`` and ``--png``. Trailing
``key=value`` arguments override ``PipelineConfig`` fields (e.g. ``global_size=112``).

``dali-range-unchecked`` / ``dali-host-unchecked`` are ``dali-range`` / ``dali-host`` with
``frame_check=none`` (no CRC-32 check of the fetched frames): the ratios ``... check cpu`` and
``... check rate`` give the check's cost in the same run.

The frame check is also timed alone (``frame_check``): the range reader's CPU time per triplet
in this process with the check and without, batch by batch alternately, medians, and that
difference as a share of ``dali-range``'s and ``dali-host``'s CPU per triplet.

``dali-host`` / ``dali-host-whole`` build only the graph's host side (``pipeline.host``: what a
GPU run keeps on the CPU: reads, frame and parameter draws, byte slicing) on the CPU, in range
mode (the GPU presets') and whole mode; their ``cpu_ms_per_triplet`` is the host CPU a GPU run
spends per triplet (the mixed decoder's own host work excepted).

Parallelism is what the work needs, not what the machine has: DALI threads, range readers,
DataLoader and FFCV workers and the decode-ceiling processes are at most ``MAX_PARALLEL`` (and
DALI threads at most one per sample of a batch), so a 128-core host neither starts hundreds of
processes nor runs out of memory or file handles.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.device import resolve_device
from pipeline.bench import dali_decode_rate, frame_bytes, measure, pil_decode_rate
from pipeline.clip_plan import CLIP_WORKLOADS, layout_of
from pipeline.clip_reference import ClipReferenceLoader
from pipeline.config import PipelineConfig
from pipeline.dataset import open_split, read_card
from pipeline.loader import build_loader, parse_device
from pipeline.params import BatchClock
from pipeline.range_source import EpochOrder, RangeSource
from pipeline.reference import ReferenceLoader
from pipeline.video_decode import DECODERS
from shards.card import has_checksums
from tools.config import load_config, parse_overrides

LOADERS = ["dali", "dali-range", "dali-range-unchecked", "dali-host", "dali-host-unchecked", "dali-host-whole", "torch",
           "mp4", "ffcv"]
WORKLOADS = ["tcore", "simple", "dualvar", "cstp", "localglobal"]
# loader: (read mode, graph); dali-host is the GPU presets' host side (range reads)
DALI = {"dali": ("whole", "cpu"), "dali-range": ("range", "cpu"), "dali-host": ("range", "host"),
        "dali-host-whole": ("whole", "host"), "dali-range-unchecked": ("range", "cpu"),
        "dali-host-unchecked": ("range", "host")}
HOST_BATCHES = 8  # dali-host loaders run this many times --batches per repeat
MAX_PARALLEL = 16  # each DataLoader / range worker is a process of ~0.3 GB; a batch of 32 splits no finer


def parallelism(batch: int) -> int:
    """Workers (processes) for a loader: the cores, at most MAX_PARALLEL and one per sample of a batch."""
    return max(1, min(os.cpu_count() or 1, MAX_PARALLEL, batch))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.profile_loader", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="shard directory (with dataset.json)")
    ap.add_argument("--loaders", default=",".join(LOADERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--batches", type=int, default=8, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None,
                    help="batches after the first one, untimed (default 2 × workers + 2: more than any "
                         "loader holds ready, so the timed batches are made while timed)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--split", default="train")
    ap.add_argument("--device", default="auto", help="auto (cuda when usable, else cpu), cpu, cuda or cuda:N; "
                    "cuda without a usable GPU is an error")
    ap.add_argument("--root", default=None, help="the source collection (for mp4; default: the sample tree)")
    ap.add_argument("--mp4-decoder", default="auto", choices=["auto", *DECODERS],
                    help="the mp4 peers' decoder (auto: the fastest installed, pipeline.video_decode)")
    ap.add_argument("--workers", type=int, default=None,
                    help=f"DataLoader/FFCV workers and range readers (default: cores, at most {MAX_PARALLEL} and the batch)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("overrides", nargs="*", help="PipelineConfig overrides, key=value")
    args = ap.parse_args(argv)
    for name, allowed in (("loaders", LOADERS), ("workloads", WORKLOADS)):
        items = [s for s in getattr(args, name).split(",") if s]
        bad = [s for s in items if s not in allowed]
        if bad:
            ap.error(f"--{name}: unknown {bad}; choose from {allowed}")
        setattr(args, name, items)
    if args.workers is None:
        args.workers = parallelism(args.batch)
    if args.warmup is None:
        args.warmup = 2 * args.workers + 2
    return args


def default_root(shards: Path) -> Path | None:
    """The sample collection's tree when the shards were made from it."""
    if read_card(shards).get("settings", {}).get("data") == "sample":
        return Path("data/sample_kinetics")
    return None


def run_one(name: str, workload: str, args, base: PipelineConfig, split, device: str, tmp: Path) -> dict:
    """Measure one loader on one workload; returns its entry (or {"skipped": reason})."""
    # enough samples that no loader's read-ahead (workers × prefetch batches) reaches the end of
    # the epoch during the timed batches: reads and CPU are then those of the batches timed
    # the host-side loaders are ~100× faster: more batches keep their CPU time well above the clock tick
    batches = args.batches * (HOST_BATCHES if name.startswith("dali-host") else 1)
    needed = (1 + args.warmup + args.repeats * batches + 4 * args.workers + 4) * args.batch
    repeat = math.ceil(needed / len(split.samples)) + 1
    # DALI threads: one more than the cores used unless overridden (measured on 2 cores, simple
    # workload: CPU use 66 % -> 84 % of the cores, as each operator's last samples leave threads
    # idle), at most one per sample
    dali_threads = min(args.workers + 1, args.batch)
    if "num_threads" in parse_overrides(args.overrides):
        dali_threads = base.num_threads
    cfg = PipelineConfig(**{**base.__dict__, "workload": workload, "repeat": repeat, "num_threads": dali_threads,
                            "range_workers": args.workers, "verify_offsets": False,
                            "shuffle_buffer": min(base.shuffle_buffer, 2 * args.batch)})
    clips = workload in CLIP_WORKLOADS
    if clips and name not in ("dali", "dali-range", "torch", "mp4"):
        return {"skipped": "clip workloads: the dali, dali-range, torch and mp4 loaders only"}
    if name in DALI:
        cfg.read_mode, graph = DALI[name]
        cfg.frame_check = "none" if name.endswith("-unchecked") else cfg.frame_check
        on = "host" if graph == "host" else device

        def make():
            return build_loader(cfg, args.shards, batch_size=args.batch, device=on).iter_epoch(0)
    elif name in ("torch", "mp4"):
        root = args.root or default_root(Path(args.shards))
        if name == "mp4" and (root is None or not Path(root).is_dir()):
            return {"skipped": "mp4 needs --root (the collection the shards were made from)"}

        kind = ClipReferenceLoader if clips else ReferenceLoader
        try:
            ref = kind(name, cfg, split, batch_size=args.batch, num_workers=args.workers, root=root,
                       decoder=args.mp4_decoder)
        except ValueError as exc:  # a decoder that is not installed
            return {"skipped": str(exc)}

        def make():
            return ref.iter_epoch(0)
    else:
        if workload != "simple":
            return {"skipped": "ffcv runs the simple workload only (pre-sampled frames, one crop each)"}
        try:
            from pipeline.ffcv_ref import FfcvLoader, require_ffcv, write_triplets

            require_ffcv()
        except ImportError as exc:
            return {"skipped": str(exc)}
        path = write_triplets(split, cfg, tmp / "triplets.beton", draws=repeat)

        def make():
            return FfcvLoader(path, cfg, batch_size=args.batch, num_workers=args.workers).iter_epoch(0)
        r = measure(make, batch_size=args.batch, batches=args.batches, repeats=args.repeats, warmup=args.warmup)
        # FFCV maps the file (no read() for rchar to see): count the .beton's bytes per triplet
        r["bytes_read_per_triplet"] = max(r["bytes_read_per_triplet"], path.stat().st_size / (len(split.samples) * repeat))
        return r
    frames = layout_of(cfg).delivered_frames if clips else 3
    r = measure(make, batch_size=args.batch, batches=batches, repeats=args.repeats, warmup=args.warmup,
                frames_per_sample=frames)
    if name in ("torch", "mp4"):
        r["decoder"] = ref.decoder
    return r


def ceiling(split, dali_device: str, device_id, workers: int) -> dict:
    """Frames/s of decoding the shards' JPEGs alone with PIL and with DALI (``workers`` processes or
    threads, as the loaders get); triplets = best / 3."""
    jpegs = frame_bytes(split)
    pil = pil_decode_rate(jpegs, workers)
    dali = dali_decode_rate(jpegs, dali_device, device_id, workers)
    return {"pil_frames_per_s": pil, "dali_frames_per_s": dali, "triplets_per_s": max(pil, dali) / 3,
            "jpeg_bytes_mean": sum(map(len, jpegs)) / len(jpegs)}


def check_cost(split, base: PipelineConfig, batch: int, rounds: int = 400) -> dict:
    """The range reader's CPU µs per triplet (this process: reads, checks) with ``frame_check=auto``
    and ``none``, the two alternating batch by batch (first one, then the other), medians."""
    nb = max(1, len(split.samples) // batch)
    sources = {}
    for check in ("auto", "none"):
        cfg = replace(base, frame_check=check, read_mode="range")
        order = EpochOrder(len(split.samples), cfg.seed, 0, 1, nb * batch)
        sources[check] = RangeSource(cfg, split, order, BatchClock(0, 0, nb), min(batch, len(split.samples)),
                                     (cfg.seed, 0), has_checksums(split.card))
    times: dict[str, list[float]] = {k: [] for k in sources}
    for r in range(rounds):
        epoch, b = divmod(r // 2, nb)
        for k in (("auto", "none") if r % 2 == 0 else ("none", "auto")):
            t0 = time.process_time_ns()
            sources[k].read(epoch, b)
            times[k].append((time.process_time_ns() - t0) / 1e3 / sources[k].batch_size)
    checked, plain = statistics.median(times["auto"]), statistics.median(times["none"])
    return {"checked_us_per_triplet": checked, "unchecked_us_per_triplet": plain, "check_us_per_triplet": checked - plain}


def check_shares(report: dict) -> dict:
    """The frame check's µs per triplet as a share of each range loader's CPU per triplet, per workload
    (left out where a run was too short for the CPU clock to tick: 0 ms measured)."""
    us = report["frame_check"]["check_us_per_triplet"]
    return {f"{workload} {name}": us / 1e3 / entry["loaders"][name]["cpu_ms_per_triplet"]
            for workload, entry in report["workloads"].items() for name in ("dali-range", "dali-host")
            if entry["loaders"].get(name, {}).get("cpu_ms_per_triplet", 0) > 0}


def describe_device(device: str, workers: int) -> str:
    cores = f"{workers} of {os.cpu_count()} CPU cores"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(parse_device(device)[2])} (+{cores})"
    return f"cpu ({cores})"


def _share(a: float, b: float) -> float:
    """a / b; NaN when b is 0 (a run too short for the CPU clock to tick)."""
    return a / b if b > 0 else float("nan")


def ratios(report: dict) -> dict:
    """{workload: {"dali/torch": …, …}}: each DALI loader's triplets/s over every other loader's."""
    out = {}
    for workload, entry in report["workloads"].items():
        rates = {k: v["triplets_per_s"] for k, v in entry["loaders"].items() if "triplets_per_s" in v}
        out[workload] = {f"{d}/{o}": rates[d] / rates[o] for d in ("dali", "dali-range") if d in rates
                         for o in rates if not o.startswith("dali")}
        for host, full in (("dali-host", "dali-range"), ("dali-host-whole", "dali")):  # host share of CPU use
            if host in rates and full in rates:
                out[workload][f"{host}/{full} cpu"] = _share(entry["loaders"][host]["cpu_ms_per_triplet"],
                                                             entry["loaders"][full]["cpu_ms_per_triplet"])
        for checked in ("dali-range", "dali-host"):  # the frame check's cost: checked over unchecked
            plain = entry["loaders"].get(f"{checked}-unchecked", {})
            if checked in rates and "triplets_per_s" in plain:
                out[workload][f"{checked} check cpu"] = _share(entry["loaders"][checked]["cpu_ms_per_triplet"],
                                                               plain["cpu_ms_per_triplet"])
                out[workload][f"{checked} check rate"] = rates[checked] / plain["triplets_per_s"]
        for d in ("dali", "dali-range"):
            if d in rates:
                out[workload][f"{d}/ceiling"] = entry["loaders"][d]["fraction_of_ceiling"]
    return out


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ceil = report["ceiling_triplets_per_s"]
    for workload, entry in report["workloads"].items():
        table = Table(title=f"{workload} workload on {report['device']} (ceiling {ceil:.0f} triplets/s)")
        for col in ("loader", "triplets/s", "frames/s", "× ceiling", "decoded/delivered", "first batch s",
                    "CPU util", "CPU ms/triplet", "peak RSS MB", "KB read/triplet"):
            table.add_column(col, justify="left" if col == "loader" else "right")
        for name, r in entry["loaders"].items():
            if "skipped" in r:
                table.add_row(name, "skipped", *[""] * 8)
                continue
            table.add_row(name, f"{r['triplets_per_s']:.1f}", f"{r['frames_per_s']:.0f}",
                          f"{r['fraction_of_ceiling']:.2f}", f"{r['decoded_per_delivered']:.2f}",
                          f"{r['first_batch_s']:.2f}", f"{r['cpu_util']:.0%}", f"{r['cpu_ms_per_triplet']:.1f}",
                          f"{r['peak_rss_mb']:.0f}",
                          f"{r['bytes_read_per_triplet'] / 1024:.0f}")
        Console().print(table)
        for name, r in entry["loaders"].items():
            if "skipped" in r:
                Console().print(f"  {name} skipped: {r['skipped']}")
        found = report.get("ratios", {}).get(workload, {})
        if found:
            Console().print("  " + ", ".join(f"{k} {v:.2f}×" for k, v in found.items()))


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(report["workloads"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        entries = {k: v for k, v in report["workloads"][workload]["loaders"].items() if "skipped" not in v}
        ax.bar(list(entries), [v["triplets_per_s"] for v in entries.values()], color="tab:blue")
        ax.axhline(report["ceiling_triplets_per_s"], color="tab:red", linestyle="--", label="decode ceiling")
        ax.set_title(f"{workload}, {report['device']}")
        ax.set_ylabel("triplets / s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = str(resolve_device(args.device))
        base = load_config(PipelineConfig, None, args.overrides)
        base.split = args.split
        split = open_split(args.shards, args.split)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dali_device, device_id, _ = parse_device(device)
    ceil = ceiling(split, dali_device, device_id, args.workers)
    report = {"device": describe_device(device, args.workers), "ceiling_triplets_per_s": ceil["triplets_per_s"],
              "ceiling": ceil, "batch": args.batch, "batches": args.batches, "repeats": args.repeats,
              "split_samples": len(split.samples), "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            entries = {}
            for name in args.loaders:
                print(f"profiling {name} on {workload} ...", file=sys.stderr, flush=True)
                r = run_one(name, workload, args, base, split, device, Path(tmp))
                gc.collect()  # the loader's pipeline and workers go before the next loader is measured
                if "triplets_per_s" in r:  # decoded frames/s over the decode ceiling's
                    r["fraction_of_ceiling"] = r["frames_per_s"] * r["decoded_per_delivered"] / (3 * ceil["triplets_per_s"])
                entries[name] = r
            report["workloads"][workload] = {"loaders": entries}
    report["loaders"] = report["workloads"].get("tcore", {}).get("loaders", {})
    report["ratios"] = ratios(report)
    report["frame_check"] = check_cost(split, base, args.batch)
    report["frame_check"]["share_of_loader_cpu"] = check_shares(report)
    print_table(report)
    fc = report["frame_check"]
    print(f"frame check (range reader, CPU per triplet, medians): {fc['checked_us_per_triplet']:.1f} µs checked, "
          f"{fc['unchecked_us_per_triplet']:.1f} µs unchecked: +{fc['check_us_per_triplet']:.1f} µs; of the loaders' "
          "CPU per triplet: " + ", ".join(f"{k} {v:.2%}" for k, v in fc["share_of_loader_cpu"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.png:
        plot(report, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
