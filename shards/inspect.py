"""``python -m shards.inspect OUT [--verify [--quick]]``: what a shards directory holds, and whether it is sound.

OUT may be a local path or an fsspec URL (``s3://...``): the summary then reads the card and
manifests through fsspec, and ``--verify`` streams each tar from the store.

The summary comes from the dataset card and manifests. ``--verify`` checks every byte of every
shard and names every bad frame (shards/verify.py); ``--verify --quick`` compares each tar's size
and SHA-256 with the card. Problems are printed as a table and written to ``OUT/verify.parquet``
(or, when OUT is a URL or not writable, next to it or in the current directory; the path is
printed); exit code 1 when there is any.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from shards.card import has_checksums, read_card, read_rows, unused_files
from shards.integrity import METADATA
from shards.storage import Output, check_url, protocol
from shards.verify import ShardJob, ShardResult, run_jobs, sizes_only

REPORT = "verify.parquet"
REPORT_SCHEMA = pa.schema([("split", pa.string()), ("shard", pa.string()), ("key", pa.string()),
                           ("frame", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])
TABLE_ROWS = 40  # problems shown on screen; the report has them all
LOG_EVERY_S = 30.0  # progress lines when the output is not a terminal
PARALLEL_MIN_BYTES = 256 * 2**20  # smaller sets are checked in this process (a worker takes seconds to start)


def summary(out: str) -> list[Table]:
    """Per-split table (clips, classes, frames, hours, bytes, bytes per clip-second) and rejects by reason."""
    card = read_card(out)
    output = Output.open(out)
    rejected = read_rows(output, "rejected.parquet")
    t = Table(title=f"shards in {out} (format v{card['format_version']})")
    for col in ("split", "clips", "classes", "frames", "hours", "GB", "KB/clip-s", "shards", "missing", "rejected",
                "unused files"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, s in card["splits"].items():
        manifest = read_rows(output, f"{split}/manifest.parquet")
        classes = len({r["label"] for r in manifest if r["label"]})
        kbps = s["bytes"] / 1000 / s["seconds"] if s["seconds"] else 0.0
        t.add_row(split, str(len(manifest)), str(classes), str(s["frames"]), f"{s['seconds'] / 3600:.3f}",
                  f"{s['bytes'] / 1e9:.3f}", f"{kbps:.0f}", str(len(s["shards"])), str(s["missing"]),
                  str(s["rejected"]), str(unused_files(s)))
    r = Table(title="rejects by reason")
    for col in ("split", "stage", "reason", "clips"):
        r.add_column(col)
    reasons = Counter((x["split"], x["stage"], x["reason"].split(" (")[0].split(":")[0]) for x in rejected)
    for (split, stage, reason), n in sorted(reasons.items()):
        r.add_row(split, stage, reason, str(n))
    return [t, r] if reasons else [t]


def verify(out: str, console: Console, quick: bool = False, workers: int = 1) -> list[dict[str, Any]]:
    """Check every shard of ``out`` (``quick``: sizes and digests only) with ``workers`` processes (0: one
    per core for sets over PARALLEL_MIN_BYTES); prints one line per split and returns every problem found."""
    card = read_card(out)
    output = Output.open(out)
    checksums = has_checksums(card)
    if not checksums:
        console.print("format v1: no digests; --quick compares each tar's size with the card only (--verify "
                      "without --quick decodes every frame)" if quick else
                      "format v1: no checksums to check; every frame is decoded")
    jobs, manifests = [], {}
    for split, s in card["splits"].items():
        manifests[split] = read_rows(output, f"{split}/manifest.parquet")
        by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
        for row in manifests[split]:
            by_shard[row["shard"]][row["key"]] = row
        jobs += [ShardJob(output, split, shard, by_shard[shard["tar"]], checksums, quick) for shard in s["shards"]]
    if not workers:
        big = sum(j.shard["bytes"] for j in jobs) >= PARALLEL_MIN_BYTES
        workers = (os.cpu_count() or 1) if big else 1
    if quick and not checksums:
        results = sizes_only(jobs)
    else:
        results = _run_with_progress(jobs, workers, console, "checking digests" if quick else "verifying")
    problems = []
    for split, s in card["splits"].items():
        done = [(j, r) for j, r in zip(jobs, results) if j.split == split]
        problems += _split_problems(split, s, done, manifests[split], quick)
        _print_split(console, split, done, problems, quick, checksums)
    return problems


def _run_with_progress(jobs: list[ShardJob], workers: int, console: Console, what: str) -> list[ShardResult]:
    total = sum(j.shard["bytes"] for j in jobs)
    columns = (TextColumn(f"[bold]{what}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    state = {"bytes": 0, "problems": 0, "logged": time.perf_counter()}
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=total)

        def done(job: ShardJob, result: ShardResult) -> None:
            bar.advance(task, job.shard["bytes"])
            state["bytes"] += job.shard["bytes"]
            state["problems"] += len(result.problems)
            if not console.is_terminal and time.perf_counter() - state["logged"] > LOG_EVERY_S:
                state["logged"] = time.perf_counter()
                print(f"{what}: {state['bytes'] / 1e9:.2f} of {total / 1e9:.2f} GB, {state['problems']} problems so far",
                      file=sys.stderr, flush=True)

        return run_jobs(jobs, workers, done)


def _split_problems(split: str, s: dict, done: list[tuple[ShardJob, ShardResult]], manifest: list[dict],
                    quick: bool) -> list[dict[str, Any]]:
    """The shards' problems, plus manifest samples no tar held and count mismatches."""
    found = [p for _, r in done for p in r.problems]
    if quick:
        return found
    seen = set().union(*(r.keys for _, r in done)) if done else set()
    for row in manifest:
        if row["key"] not in seen:
            found.append({"split": split, "shard": row["shard"], "key": row["key"], "frame": None,
                          "reason": METADATA, "detail": "listed in the manifest, held by no tar"})
    samples, frames = sum(r.samples for _, r in done), sum(r.frames for _, r in done)
    if not found and (samples != len(manifest) or frames != s["frames"]):
        found.append({"split": split, "shard": "", "key": None, "frame": None, "reason": METADATA,
                      "detail": f"shards hold {samples} samples / {frames} frames, manifest and card say "
                                f"{len(manifest)} / {s['frames']}"})
    return found


def _print_split(console: Console, split: str, done: list[tuple[ShardJob, ShardResult]],
                 problems: list[dict], quick: bool, checksums: bool) -> None:
    mine = [p for p in problems if p["split"] == split]
    if mine:
        shards = len({p["shard"] for p in mine})
        console.print(f"[red]bad[/red] {split}: {len(mine)} problem(s) in {shards} shard(s)")
    elif quick:
        what = "size and sha256 match the card" if checksums else "sizes match the card"
        console.print(f"[green]ok[/green] {split}: {len(done)} shards, {sum(r.bytes for _, r in done) / 1e9:.3f} GB, "
                      f"{what}")
    else:
        how = "checksums match" if checksums else "format v1: no checksums"
        console.print(f"[green]ok[/green] {split}: {sum(r.samples for _, r in done)} samples, "
                      f"{sum(r.frames for _, r in done)} frames decoded, {how}")


def report_path(out: str, explicit: str = "") -> tuple[Path, bool]:
    """Where the report goes, and whether that is the default place: OUT/verify.parquet for a writable
    local OUT, else next to OUT (``<name>.verify.parquet``) or, failing that, in the current directory."""
    if explicit:
        return Path(explicit), False
    name = out.rstrip("/").rsplit("/", 1)[-1] or "shards"
    if protocol(out) is None:
        root = Path(out).resolve()
        if os.access(root, os.W_OK):
            return root / REPORT, True
        if os.access(root.parent, os.W_OK):
            return root.parent / f"{root.name}.{REPORT}", True
    return Path.cwd() / f"{name}.{REPORT}", True


def publish_report(problems: list[dict], out: str, explicit: str, console: Console) -> None:
    """Show the problems and write them to the report; a clean default run removes an old report."""
    path, default = report_path(out, explicit)
    if not problems and default:
        if path.is_file():
            path.unlink()
            console.print(f"no problems; removed the report of an earlier run, {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(problems, schema=REPORT_SCHEMA), tmp)
    os.replace(tmp, path)
    if not problems:
        console.print(f"no problems; report: {path}")
        return
    table = Table(title=f"{len(problems)} problem(s) (empty frame: the whole sample; empty key: the whole shard)")
    for col in ("shard", "key", "frame", "reason", "detail"):
        table.add_column(col, overflow="fold")
    for p in problems[:TABLE_ROWS]:
        table.add_row(p["shard"], p["key"] or "", "" if p["frame"] is None else str(p["frame"]), p["reason"],
                      p["detail"])
    console.print(table)
    more = f"; {len(problems) - TABLE_ROWS} more rows there" if len(problems) > TABLE_ROWS else ""
    reasons = ", ".join(f"{r} {n}" for r, n in Counter(p["reason"] for p in problems).most_common())
    console.print(f"report: {path} ({reasons}){more}")


def main(argv: list[str] | None = None) -> int:
    """Print the summary; with --verify also check everything. Returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m shards.inspect", description=__doc__.splitlines()[0])
    p.add_argument("out", help="shards directory or URL (OUT of the sharder)")
    p.add_argument("--verify", action="store_true", help="check every checksum, decode every frame, cross-check all")
    p.add_argument("--quick", action="store_true", help="with --verify: compare each tar's size and sha256 only")
    p.add_argument("--workers", type=int, default=0,
                   help="processes checking shards (default 0: one per core, or one for a set under 256 MB)")
    p.add_argument("--report", default="", help=f"where to write the problems (default: OUT/{REPORT}, see above)")
    a = p.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 140
    try:
        check_url("OUT", a.out)
        for table in summary(a.out):
            console.print(table)
        if a.verify or a.quick:
            problems = verify(a.out, console, a.quick, a.workers)
            publish_report(problems, a.out, a.report, console)
            return 1 if problems else 0
    except (ValueError, OSError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
