"""Live progress of a sharding job: clips/s, MB/s, ETA and rejects so far."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class JobProgress:
    """A rich progress bar fed with one event per clip (from any worker)."""

    def __init__(self, total_clips: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.total = total_clips
        self.done = 0
        self.rejected = 0
        self.skipped_shards = 0
        self._encoded = 0  # clips encoded in this run (not skipped): the rates count these
        self._encoded_bytes = 0
        self._start = time.perf_counter()
        self.elapsed = 0.0
        self._bar = Progress(
            TextColumn("[bold]sharding"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("rejects {task.fields[rejects]}"),
            TimeRemainingColumn(), console=self.console, disable=not self.console.is_terminal,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("clips", total=total_clips, rate="", rejects=0)
        self._last_log = 0.0

    def __enter__(self) -> JobProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.elapsed = time.perf_counter() - self._start
        self._bar.stop()

    @property
    def clip_rate(self) -> float:
        return self._encoded / max(time.perf_counter() - self._start, 1e-9)

    @property
    def mb_rate(self) -> float:
        return self._encoded_bytes / 2**20 / max(time.perf_counter() - self._start, 1e-9)

    def skip(self, clips: int, stats: dict[str, Any]) -> None:
        """A shard finished by an earlier run."""
        self.skipped_shards += 1
        self.done += clips
        self.rejected += stats.get("rejected", 0)
        self._update()

    def clip(self, event: dict[str, Any]) -> None:
        """One clip encoded (``ok``) or rejected."""
        self.done += 1
        self._encoded += 1
        if event["ok"]:
            self._encoded_bytes += event["bytes"]
        else:
            self.rejected += 1
        self._update()

    def _update(self) -> None:
        rate = f"{self.clip_rate:.1f} clips/s {self.mb_rate:.1f} MB/s"
        self._bar.update(self._task, completed=self.done, rate=rate, rejects=self.rejected)
        now = time.perf_counter()
        if not self.console.is_terminal and (now - self._last_log > 10 or self.done == self.total):
            self._last_log = now
            print(f"sharding: {self.done}/{self.total} clips, {rate}, {self.rejected} rejected",
                  file=sys.stderr, flush=True)
