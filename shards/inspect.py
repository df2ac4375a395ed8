"""``python -m shards.inspect OUT [--verify]``: what a shards directory holds, and whether it is sound.

OUT may be a local path or an fsspec URL (``s3://...``): the summary then reads the card and
manifests through fsspec, and ``--verify`` streams each tar from the store.

The summary comes from the dataset card and manifests. ``--verify`` reads every shard: each
index entry must point at the tar member of that name, each offsets table must cover its
``.mjpeg`` exactly, each JSON must agree with the offsets and the manifest, and every frame
must decode as a JPEG of the recorded size.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from collections import Counter
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from rich.console import Console
from rich.progress import track
from rich.table import Table

from shards.card import read_card, unused_files
from shards.storage import Output, check_url
from shards.tario import parse_index


def read_rows(output: Output, rel: str) -> list[dict[str, Any]]:
    """The rows of the parquet table OUT/``rel``; ValueError naming it if it is missing."""
    data = output.read_bytes(rel)
    if data is None:
        raise ValueError(f"{output.display(rel)}: missing (has the job finished?)")
    return pq.read_table(io.BytesIO(data)).to_pylist()


def summary(out: str) -> list[Table]:
    """Per-split table (clips, classes, frames, hours, bytes, bytes per clip-second) and rejects by reason."""
    card = read_card(out)
    output = Output.open(out)
    rejected = read_rows(output, "rejected.parquet")
    t = Table(title=f"shards in {out}")
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


def _verify_sample(tar_name: str, key: str, parts: dict[str, bytes], row: dict[str, Any]) -> int:
    """Check one sample's components; returns its frame count. Raises ValueError."""
    where = f"{tar_name}:{key}"
    for ext in ("mjpeg", "offsets", "json"):
        if ext not in parts:
            raise ValueError(f"{where}: no .{ext} component")
    offsets = np.frombuffer(parts["offsets"], dtype="<i8")
    mjpeg = parts["mjpeg"]
    meta = json.loads(parts["json"])
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(mjpeg) or np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{where}: offsets do not partition the {len(mjpeg)}-byte .mjpeg")
    n = len(offsets) - 1
    for field, expect in (("num_frames", n), ("key", key), ("label", row["label"]), ("width", row["width"])):
        if meta.get(field) != expect:
            raise ValueError(f"{where}: json {field}={meta.get(field)!r}, expected {expect!r}")
    for i in range(n):
        img = Image.open(io.BytesIO(mjpeg[offsets[i]:offsets[i + 1]]))
        img.load()
        if img.format != "JPEG" or img.size != (meta["width"], meta["height"]):
            raise ValueError(f"{where}: frame {i} is {img.format} {img.size}, expected JPEG "
                             f"{(meta['width'], meta['height'])}")
    return n


def verify_shard(output: Output, split: str, shard: dict[str, Any], rows: dict[str, dict]) -> tuple[int, int]:
    """Verify one shard against its index and the manifest, streaming it one sample at a time;
    returns (samples, frames)."""
    tar_path = output.display(f"{split}/{shard['tar']}")
    index_rel = f"{split}/{shard['index']}"
    index_bytes = output.read_bytes(index_rel)
    if index_bytes is None:
        raise ValueError(f"{output.display(index_rel)}: missing index")
    index = parse_index(index_bytes.decode(), output.display(index_rel))
    expected = {m.name: (m.offset, m.size) for sample in index for m in sample}
    samples = frames = 0
    key, parts = None, {}

    def finish() -> None:
        nonlocal samples, frames
        if key not in rows:
            raise ValueError(f"{tar_path}: sample {key} is not in the manifest")
        frames += _verify_sample(shard["tar"], key, parts, rows[key])
        samples += 1

    with output.open_read(f"{split}/{shard['tar']}") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        for m in tar:
            if expected.pop(m.name, None) != (m.offset_data, m.size):
                raise ValueError(f"{tar_path}: index entry for {m.name} does not match the tar")
            name_key, ext = m.name.split(".", 1)
            if name_key != key:
                if key is not None:
                    finish()
                key, parts = name_key, {}
            parts[ext] = tar.extractfile(m).read()
        if key is not None:
            finish()
    if expected:
        raise ValueError(f"{tar_path}: the index lists {len(expected)} members the tar does not hold")
    if samples != len(index) or samples != shard["samples"]:
        raise ValueError(f"{tar_path}: tar has {samples} samples, index {len(index)}, card {shard['samples']}")
    return samples, frames


def verify(out: str, console: Console) -> None:
    """Decode every frame of every sample and cross-check tar, index, JSON and manifest."""
    card = read_card(out)
    output = Output.open(out)
    for split, s in card["splits"].items():
        rows = {r["key"]: r for r in read_rows(output, f"{split}/manifest.parquet")}
        samples = frames = 0
        for shard in track(s["shards"], description=f"verify {split}", console=console,
                           disable=not console.is_terminal):
            n, f = verify_shard(output, split, shard, rows)
            samples, frames = samples + n, frames + f
        if samples != len(rows) or frames != s["frames"]:
            raise ValueError(f"{split}: shards hold {samples} samples / {frames} frames, "
                             f"manifest and card say {len(rows)} / {s['frames']}")
        console.print(f"[green]ok[/green] {split}: {samples} samples, {frames} frames decoded")


def main(argv: list[str] | None = None) -> int:
    """Print the summary; with --verify also check everything. Returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m shards.inspect", description=__doc__.splitlines()[0])
    p.add_argument("out", help="shards directory or URL (OUT of the sharder)")
    p.add_argument("--verify", action="store_true", help="decode every frame and cross-check everything")
    a = p.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 140
    try:
        check_url("OUT", a.out)
        for table in summary(a.out):
            console.print(table)
        if a.verify:
            verify(a.out, console)
    except (ValueError, OSError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
