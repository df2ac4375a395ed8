"""A sharding job: plan shards, run the shard tasks on an engine (shards/engine.py), write the manifests.

The plan (which clips go to which shard) is fixed before any shard is written and saved as
``OUT/plan.json``; a re-run of the same command reuses it, skips finished shards and redoes
unfinished ones, so the output is the same whatever WORKERS is and however often the job was
interrupted. For a remote OUT (any fsspec URL, see shards/storage.py) every file is staged
locally and uploaded at the point it would be written locally, the dataset card last.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import FORMAT_VERSION, __version__
from shards.config import ShardsConfig
from shards.encode import ClipRejected, encode_clip, probe_duration
from shards.engine import Engine, make_engine
from shards.integrity import CRC_DTYPE, CRC_EXT, FRAME_CHECKSUM, SHARD_DIGEST
from shards.progress import JobProgress
from shards.shard import EncodeSettings, ShardTask, atomic_write, shard_is_finished
from shards.sources import SplitSources
from shards.storage import Output

CALIBRATION_CLIPS = 3  # clips encoded (their first frames only) to learn bytes per frame
CALIBRATION_FRAMES = 12
DURATION_PROBES = 32  # clips whose header duration sets the expected frames per clip


def estimate_clip_bytes(splits: list[SplitSources], settings: EncodeSettings) -> float:
    """Expected encoded bytes of one clip: bytes per frame (from the first frames of the first
    few decodable clips) times frames per clip (from header durations). Deterministic: it only
    looks at the first clips in sorted order."""
    clips = [c for s in splits for c in s.clips]
    per_frame, rates = [], []
    for clip in clips:
        if len(per_frame) >= CALIBRATION_CLIPS:
            break
        try:
            enc = encode_clip(clip.path, settings.size, settings.quality, settings.fps, 1,
                              threads=settings.threads, max_frames=CALIBRATION_FRAMES)
        except ClipRejected:
            continue
        per_frame.append(len(enc.mjpeg) / enc.num_frames)
        rates.append(enc.fps)
    durations = [d for d in (probe_duration(c.path) for c in clips[:DURATION_PROBES]) if d]
    if not per_frame or not durations:
        return 1.0
    frames = statistics.median(durations) * statistics.median(rates)
    return statistics.median(per_frame) * max(frames, 1.0) + 2048


def make_plan(cfg: ShardsConfig, splits: list[SplitSources], settings: EncodeSettings) -> dict[str, Any]:
    """Cut every split into shards of about SHARD_MB (and at most MAX_PER_SHARD clips)."""
    per_clip = estimate_clip_bytes(splits, settings)
    per_shard = max(1, math.floor(cfg.shard_mb * 2**20 / per_clip))
    if cfg.max_per_shard:
        per_shard = min(per_shard, cfg.max_per_shard)
    plan: dict[str, Any] = {"format_version": FORMAT_VERSION, "settings": cfg.output_settings(),
                            "clips_per_shard": per_shard, "splits": {}}
    for src in splits:
        groups = [src.clips[i : i + per_shard] for i in range(0, len(src.clips), per_shard)]
        plan["splits"][src.split] = [
            {"name": f"{src.split}-{n:06d}", "keys": [c.key for c in g]} for n, g in enumerate(groups)
        ]
    return plan


def write_file(output: Output, rel: str, data: bytes) -> None:
    """Write OUT/``rel`` whole (atomically), uploading it for a remote OUT."""
    path = output.local_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    output.publish([rel])


def load_or_make_plan(cfg: ShardsConfig, output: Output, splits: list[SplitSources],
                      settings: EncodeSettings) -> dict:
    """Reuse OUT/plan.json when resuming (same settings and sources), else make and save one. An OUT
    planned for an older format keeps its plan, and every shard is rewritten in this format."""
    out = output.display()
    saved = output.read_bytes("plan.json")
    if saved is not None:
        plan = json.loads(saved)
        version = plan.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise ValueError(f"OUT {out} holds shard format v{version}, newer than this sharder's "
                             f"v{FORMAT_VERSION}; use a new OUT or the newer sharder")
        if plan.get("settings") != cfg.output_settings():
            raise ValueError(
                f"OUT {out} was written with other settings ({plan.get('settings')}); use a new OUT or remove it"
            )
        for src in splits:
            planned = [k for shard in plan["splits"].get(src.split, []) for k in shard["keys"]]
            if planned != [c.key for c in src.clips]:
                raise ValueError(f"OUT {out}: the clips of split '{src.split}' changed since it was planned; use a new OUT")
        if version < FORMAT_VERSION:
            print(f"note: OUT {out} holds format v{version} shards: rewriting every shard as format v{FORMAT_VERSION} "
                  "(its dataset card is replaced when the job ends)", file=sys.stderr)
            plan = {"format_version": FORMAT_VERSION, **{k: v for k, v in plan.items() if k != "format_version"}}
            write_file(output, "plan.json", json.dumps(plan, indent=1).encode())
        return plan
    plan = make_plan(cfg, splits, settings)
    write_file(output, "plan.json", json.dumps(plan, indent=1).encode())
    return plan


def build_tasks(plan: dict, splits: list[SplitSources], settings: EncodeSettings, labels: dict[str, int]) -> list[ShardTask]:
    """The shard tasks of a plan, in plan order."""
    tasks = []
    for src in splits:
        by_key = {c.key: c for c in src.clips}
        for shard in plan["splits"][src.split]:
            clips = [by_key[k] for k in shard["keys"]]
            tasks.append(ShardTask(src.split, shard["name"], clips, settings, labels))
    return tasks


def run_tasks(tasks: list[ShardTask], output: Output, engine: Engine, progress: JobProgress) -> dict[str, dict]:
    """Run unfinished tasks on ``engine``; returns stats by shard name."""
    done: dict[str, dict] = {}
    todo = []
    listings = {split: output.sizes(split) for split in dict.fromkeys(t.split for t in tasks)}
    for task in tasks:
        (output.local_dir / task.split / f"{task.name}.tar.partial").unlink(missing_ok=True)
        stats = shard_is_finished(output, task.split, task.name, listings[task.split])
        if stats is None:
            todo.append(task)
        else:
            done[task.name] = stats
            progress.skip(len(task.clips), stats)
    if todo:
        done.update(engine.run(todo, output, progress.clip))
    return done


def _write_table(rows: list[dict[str, Any]], output: Output, rel: str, schema: pa.Schema) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    write_file(output, rel, buffer.getvalue())


MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.string()), ("label_id", pa.int64()),
    ("num_frames", pa.int64()), ("fps", pa.float64()), ("width", pa.int64()), ("height", pa.int64()),
    ("bytes", pa.int64()), ("source", pa.string()), ("duration_s", pa.float64()),
])
REJECTED_SCHEMA = pa.schema([
    ("split", pa.string()), ("key", pa.string()), ("source", pa.string()),
    ("stage", pa.string()), ("reason", pa.string()),
])
MISSING_SCHEMA = pa.schema([
    ("split", pa.string()), ("key", pa.string()), ("label", pa.string()), ("youtube_id", pa.string()),
])
SKIPPED_SCHEMA = pa.schema([("split", pa.string()), ("source", pa.string()), ("reason", pa.string())])


def finalize(cfg: ShardsConfig, output: Output, plan: dict, splits: list[SplitSources],
             stats: dict[str, dict], labels: dict[str, int]) -> dict[str, Any]:
    """Write manifests, labels.json, rejected/missing/skipped tables and the dataset card."""
    card: dict[str, Any] = {
        "format": "frame-indexed-webdataset", "format_version": FORMAT_VERSION, "tool_version": __version__,
        "settings": cfg.output_settings(), "components": ["mjpeg", "offsets", CRC_EXT, "json"],
        "offsets_dtype": "<i8", "checksums": {"frame": FRAME_CHECKSUM, "frame_member": CRC_EXT,
                                              "frame_dtype": CRC_DTYPE, "shard": SHARD_DIGEST},
        "num_classes": len(labels), "splits": {},
    }
    rejected, missing, skipped = [], [], []
    for src in splits:
        names = [s["name"] for s in plan["splits"][src.split]]
        rows = [r for n in names for r in stats[n]["rows"]]
        rejected += [r for n in names for r in stats[n]["rejects"]]
        missing += src.missing
        skipped += src.skipped
        _write_table(rows, output, f"{src.split}/manifest.parquet", MANIFEST_SCHEMA)
        shard_list = [{"tar": stats[n]["shard"], "index": stats[n]["index"], "samples": stats[n]["samples"],
                       "bytes": stats[n]["tar_bytes"], SHARD_DIGEST: stats[n]["tar_sha256"],
                       f"index_{SHARD_DIGEST}": stats[n]["index_sha256"]}
                      for n in names if stats[n]["samples"]]
        card["splits"][src.split] = {
            "samples": len(rows), "listed": len(src.clips) + len(src.missing), "found": len(src.clips),
            "missing": len(src.missing), "rejected": sum(stats[n]["rejected"] for n in names),
            "unlisted_files": src.count_skipped("unlisted"), "duplicate_files": src.count_skipped("duplicate"),
            "frames": sum(r["num_frames"] for r in rows), "bytes": sum(r["bytes"] for r in rows),
            "seconds": sum(r["duration_s"] for r in rows), "shards": shard_list,
        }
    _write_table(rejected, output, "rejected.parquet", REJECTED_SCHEMA)
    _write_table(missing, output, "missing.parquet", MISSING_SCHEMA)
    _write_table(skipped, output, "skipped.parquet", SKIPPED_SCHEMA)
    write_file(output, "labels.json", json.dumps(labels, indent=1, sort_keys=True).encode())
    write_file(output, "dataset.json", json.dumps(card, indent=1).encode())  # last: "the job has finished"
    return card


def label_map(splits: list[SplitSources]) -> dict[str, int]:
    """One label -> id map shared by all splits (unlabelled clips get -1): the sources' own class
    order when they give one (UCF101's classInd.txt), else the sorted names."""
    given = next((s.classes for s in splits if s.classes), None)
    if given:
        return {name: i for i, name in enumerate(given)}
    names = sorted({c.label for s in splits for c in s.clips} | {m["label"] for s in splits for m in s.missing})
    return {name: i for i, name in enumerate(n for n in names if n)}


def run_job(cfg: ShardsConfig, splits: list[SplitSources], console=None) -> dict[str, Any]:
    """Plan, encode and write everything; returns the dataset card."""
    output = Output.open(cfg.out, cfg.stage)
    engine = make_engine(cfg)
    output.clear_stage()  # nothing runs yet: anything staged is a leftover of an interrupted run
    settings = EncodeSettings(cfg.size, cfg.quality, cfg.fps, cfg.min_frames, cfg.threads_per_worker)
    plan = load_or_make_plan(cfg, output, splits, settings)
    labels = label_map(splits)
    tasks = build_tasks(plan, splits, settings, labels)
    with JobProgress(sum(len(t.clips) for t in tasks), console=console) as progress:
        stats = run_tasks(tasks, output, engine, progress)
    card = finalize(cfg, output, plan, splits, stats, labels)
    output.clear_stage()
    card["_run"] = {"elapsed_s": progress.elapsed, "skipped_shards": progress.skipped_shards,
                    "workers": engine.workers, "clip_rate": progress.clip_rate, "mb_rate": progress.mb_rate}
    return card

