"""What data the trainer's steps saw: the bad samples the loader replaced, and the stop rule.

Each batch may carry ``bad``: the samples the range reader found bad and replaced
(``pipeline.integrity``). Every log window the ranks' records are gathered to rank 0, which
appends them to ``OUT/bad_samples.jsonl`` (``shard, key, frame, step, rank, reason``; frame null:
the whole sample) and prints one line per bad sample; the window's count and the run's total go
into ``metrics.jsonl`` (``bad_samples``, ``bad_samples_total``). A resumed run first drops the
lines of the steps it is about to redo, so the file lists each bad sample met once.

The run stops (``BadDataError``, one line naming the worst shard) once the bad samples exceed
``train.max_bad_fraction`` of the samples seen, or, during the first pass over the data, of one
pass (so that one bad clip among the first batches of a large set does not stop the run).

With ``train.log_keys`` rank 0 also writes ``OUT/keys.jsonl``: each step's sample keys and
(past, current, future) frames per rank (for comparing what two runs saw).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch.distributed as dist

BAD_FILE = "bad_samples.jsonl"
KEYS_FILE = "keys.jsonl"


class BadDataError(RuntimeError):
    """Too many bad samples: the run stops (exit 1) after writing what it has."""


class DataLog:
    """Per-run record of bad samples (and optionally keys); see the module docstring."""

    def __init__(self, out: Path, rank: int, world: int, max_fraction: float, samples_per_pass: int,
                 start_step: int, log_keys: bool = False):
        self.out, self.rank, self.world = out, rank, world
        self.max_fraction, self.samples_per_pass, self.log_keys = max_fraction, samples_per_pass, log_keys
        self.pending: list[dict[str, Any]] = []
        self.keys: list[dict[str, Any]] = []
        self.by_shard: Counter = Counter()
        self.total = 0
        kept = self._trim(out / BAD_FILE, start_step) if rank == 0 else []
        if log_keys and rank == 0:
            self._trim(out / KEYS_FILE, start_step)
        if world > 1:  # every rank needs the totals for the stop rule
            box = [kept]
            dist.broadcast_object_list(box, src=0)
            kept = box[0]
        self.by_shard.update(r["shard"] for r in kept)
        self.total = len(kept)

    @staticmethod
    def _trim(path: Path, start_step: int) -> list[dict[str, Any]]:
        """Keep the records of steps before ``start_step`` (a resumed run redoes the later ones)."""
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["step"] < start_step]
        if len(kept) != len(rows):
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def add(self, batch: dict[str, Any], step: int) -> None:
        """Note the batch trained at ``step``: its replaced bad samples (and keys)."""
        for rec in batch.get("bad", ()):
            self.pending.append({**rec, "step": step, "rank": self.rank})
        if self.log_keys:
            self.keys.append({"step": step, "rank": self.rank, "keys": list(batch["key"]),
                              "frames": batch["frame_idx"].tolist()})

    def window(self, log) -> dict[str, int]:
        """Gather the window's records to rank 0 (all ranks learn the counts); rank 0 writes them.
        Returns the metrics: ``bad_samples`` in this window, ``bad_samples_total``."""
        mine = (self.pending, self.keys)
        parts = [mine]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, mine)
        bad = sorted((r for p in parts for r in p[0]), key=lambda r: (r["step"], r["rank"]))
        keys = sorted((r for p in parts for r in p[1]), key=lambda r: (r["step"], r["rank"]))
        self.pending, self.keys = [], []
        self.by_shard.update(r["shard"] for r in bad)
        self.total += len(bad)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if bad:
                with open(self.out / BAD_FILE, "a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in bad))
            for r in bad:
                frame = "all frames" if r["frame"] is None else f"frame {r['frame']}"
                log(f"bad sample replaced: step {r['step']}, {r['shard']} {r['key']} {frame}: {r['reason']}")
            if keys:
                with open(self.out / KEYS_FILE, "a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in keys))
        return {"bad_samples": len(bad), "bad_samples_total": self.total}

    def over(self, seen: int) -> str | None:
        """The stop message when the bad samples exceed the allowed fraction of ``seen``, else None."""
        allowed = self.max_fraction * max(seen, self.samples_per_pass)
        if self.total <= allowed:
            return None
        shard, n = self.by_shard.most_common(1)[0]
        return (f"{self.total} bad samples in {seen} samples seen, over train.max_bad_fraction="
                f"{self.max_fraction:g}; worst shard {shard} ({n} bad samples); listed in {self.out / BAD_FILE} "
                "(check the set with `python -m shards.inspect SHARDS --verify`)")
