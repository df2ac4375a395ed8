"""Where shard tasks run: local worker processes, or Ray tasks on a local or remote Ray cluster.

Both engines run the same :func:`shards.shard.run_shard` on the same :class:`ShardTask`, so the
output bytes do not depend on the engine. An engine takes the unfinished tasks, calls
``on_clip`` with every per-clip event (in the driver process, for the progress display) and
returns each task's stats by shard name. Errors raised inside a task (e.g. ``OSError`` with
``ENOSPC``, or :class:`shards.storage.UploadError`) reach the caller as the original exception,
errno and file name intact. A task publishes its own shard to OUT (uploads it, for a remote OUT)
before it returns, so a finished task's shard is in OUT whichever host ran it.

``make_engine(cfg)`` is the one place that picks an engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import multiprocessing as mp
import os
import queue
import socket
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import shards
from shards.config import ShardsConfig
from shards.shard import ShardTask, run_shard, shard_files
from shards.storage import Output

ClipCallback = Callable[[dict[str, Any]], None]
POLL_S = 0.2  # how often the driver forwards progress events


class Engine(Protocol):
    """Runs shard tasks somewhere and reports their clips back to the driver."""

    workers: int  # tasks running at once (shown in the summary)

    def run(self, tasks: list[ShardTask], output: Output, on_clip: ClipCallback) -> dict[str, dict]:
        """Run every task; returns stats by shard name."""
        ...


def run_task(task: ShardTask, output: Output, on_clip: ClipCallback) -> dict[str, Any]:
    """Run one shard task where it was sent and publish its shard; a failed write names the shard
    it was writing."""
    split_dir = output.local_dir / task.split
    try:
        stats = run_shard(task, split_dir, on_clip)
    except OSError as exc:
        if exc.filename is None:  # a failed write() carries no file name: give the shard's
            exc.filename = str(split_dir / f"{task.name}.tar")
        raise
    output.publish(shard_files(task.split, task.name, stats))
    return stats


# ---------------------------------------------------------------- local worker processes

_events: Any = None


def _init_worker(events: Any) -> None:
    global _events
    _events = events


def _run_in_worker(task: ShardTask, output: Output) -> dict[str, Any]:
    number = itertools.count()
    return run_task(task, output, lambda event: _events.put((task.name, next(number), event)))


def forward_once(events: list[tuple[str, int, dict]], forwarded: set[tuple[str, int]],
                 on_clip: ClipCallback) -> None:
    """Pass each clip's event ``(shard name, clip number, event)`` on once: a retried task
    re-sends the clips of its first try."""
    for name, number, event in events:
        if (name, number) not in forwarded:
            forwarded.add((name, number))
            on_clip(event)


def _drain(events: Any, forwarded: set[tuple[str, int]], on_clip: ClipCallback) -> None:
    items = []
    while True:
        try:
            items.append(events.get_nowait())
        except queue.Empty:
            break
    forward_once(items, forwarded, on_clip)


class LocalEngine:
    """A pool of ``workers`` spawned processes on this machine.

    When a worker dies (killed, out of memory, a crash inside a decoder) the pool breaks; the
    unfinished tasks then run again in a fresh pool, up to ``max_retries`` times, and each clip
    is reported once. A task that raises (a full disk, a failed upload) stops the job at once.
    """

    def __init__(self, workers: int, max_retries: int = 3):
        self.workers, self.max_retries = workers, max_retries

    def run(self, tasks: list[ShardTask], output: Output, on_clip: ClipCallback) -> dict[str, dict]:
        done: dict[str, dict] = {}
        forwarded: set[tuple[str, int]] = set()
        for attempt in range(self.max_retries + 1):
            todo = [t for t in tasks if t.name not in done]
            if not todo:
                break
            try:
                self._run_pool(todo, output, done, forwarded, on_clip)
            except BrokenProcessPool:
                if attempt == self.max_retries:
                    left = [t.name for t in tasks if t.name not in done]
                    raise RuntimeError(
                        f"a worker process died on all {self.max_retries + 1} attempt(s) (out of memory or a crash "
                        f"in a decoder) with {len(left)} shard(s) unfinished, e.g. {left[0]}; re-run the same "
                        "command to resume") from None
                left = sum(t.name not in done for t in tasks)
                print(f"warning: a worker process died; running its {left} unfinished shard(s) again "
                      f"(attempt {attempt + 2} of {self.max_retries + 1})", file=sys.stderr)
        return done

    def _run_pool(self, tasks: list[ShardTask], output: Output, done: dict[str, dict],
                  forwarded: set[tuple[str, int]], on_clip: ClipCallback) -> None:
        """One pool over ``tasks``; finished stats go into ``done`` as they arrive."""
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(events,))
        try:
            futures = {pool.submit(_run_in_worker, t, output): t for t in tasks}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                _drain(events, forwarded, on_clip)
                for fut in finished:
                    done[futures[fut].name] = fut.result()
        finally:  # on an error, queued tasks are dropped; running ones finish or fail
            pool.shutdown(wait=True, cancel_futures=True)
            _drain(events, forwarded, on_clip)


# ---------------------------------------------------------------- Ray


class EventSink:
    """A Ray actor collecting per-clip events as ``(shard name, clip number, event)``."""

    def __init__(self) -> None:
        self._events: list[tuple[str, int, dict]] = []

    def add(self, name: str, number: int, event: dict) -> None:
        self._events.append((name, number, event))

    def drain(self) -> list[tuple[str, int, dict]]:
        events, self._events = self._events, []
        return events


def _ray_shard_task(task: ShardTask, output: Output, sink: Any) -> dict[str, Any]:
    """Body of one Ray task: run the shard, sending each clip's event to the sink."""
    import ray

    sent: list[Any] = []

    def report(event: dict) -> None:
        sent.append(sink.add.remote(task.name, len(sent), event))

    stats = run_task(task, output, report)
    if sent:
        ray.get(sent[-1])  # calls from one caller run in order: every event has arrived
    return stats


def _absolute_paths(task: ShardTask) -> ShardTask:
    """The task with absolute source paths (a worker's directory need not be the driver's)."""
    return dataclasses.replace(task, clips=[dataclasses.replace(c, path=os.path.abspath(c.path)) for c in task.clips])


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when nothing listens at a ``host:port`` Ray address (Ray itself retries
    for minutes). Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"RAY_ADDRESS {address}: nothing answers there ({exc.strerror or exc}); "
                           "start the head with `ray start --head` or fix the address") from None


class RayEngine:
    """Ray tasks, one per shard, each retried up to ``max_retries`` times if its worker or node dies.

    Without ``address`` a local Ray instance with ``workers`` CPUs is started (and stopped);
    with one, the job connects to that cluster and ships this package to its workers. Sources
    must then be on a file system that every node mounts at the same path; OUT too, unless it is
    a URL (each worker stages its shards on its own host and uploads them).
    """

    def __init__(self, workers: int, address: str = "", max_retries: int = 3, limit: int = 0):
        self.workers = workers
        self.address = address
        self.max_retries = max_retries
        self.limit = limit  # most tasks in flight at once (0: as many as the cluster runs)

    def _connect(self, ray: Any) -> bool:
        """Start or join Ray; returns True when this call started it (and must stop it)."""
        if ray.is_initialized():
            return False
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.address:
            package = str(Path(shards.__file__).parent)
            try:
                ray.init(address=self.address, runtime_env={"py_modules": [package]}, **quiet)
            except ConnectionError as exc:
                raise RuntimeError(f"RAY_ADDRESS {self.address}: cannot join the Ray cluster there "
                                   f"({str(exc).splitlines()[0]}); if it uses token authentication, "
                                   "set RAY_AUTH_MODE=token and give its token") from None
            self.workers = self.limit or int(ray.cluster_resources().get("CPU", 0)) or self.workers
        else:
            ray.init(address="local", num_cpus=self.workers, **quiet)
        return True

    def run(self, tasks: list[ShardTask], output: Output, on_clip: ClipCallback) -> dict[str, dict]:
        import ray

        started = self._connect(ray)
        pending: dict[Any, ShardTask] = {}
        try:
            sink = ray.remote(num_cpus=0)(EventSink).remote()
            remote = ray.remote(_ray_shard_task).options(
                num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)
            forwarded: set[tuple[str, int]] = set()
            todo, done = [_absolute_paths(t) for t in tasks], {}
            while todo or pending:
                while todo and (not self.limit or len(pending) < self.limit):
                    task = todo.pop(0)
                    pending[remote.remote(task, output, sink)] = task
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                forward_once(ray.get(sink.drain.remote()), forwarded, on_clip)
                for ref in ready:
                    task = pending.pop(ref)
                    done[task.name] = self._result(ray, ref, task)
            forward_once(ray.get(sink.drain.remote()), forwarded, on_clip)
            return done
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _result(self, ray: Any, ref: Any, task: ShardTask) -> dict[str, Any]:
        """A task's stats, its own exception unwrapped, or a RuntimeError once retries ran out."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            raise (cause or RuntimeError(f"shard {task.name}: {exc}")) from None
        except ray.exceptions.RayError as exc:
            raise RuntimeError(
                f"shard {task.name}: its worker was lost on all {self.max_retries + 1} attempt(s) "
                f"({type(exc).__name__}: killed, out of memory or node lost); re-run the same command to resume"
            ) from None


def make_engine(cfg: ShardsConfig) -> Engine:
    """The engine ``cfg.engine`` names (ValueError if it cannot run here)."""
    if cfg.engine == "local":
        return LocalEngine(cfg.num_workers, cfg.max_retries)
    if cfg.engine == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ValueError("ENGINE=ray needs the ray package: pip install -e '.[ray]'")
        if cfg.ray_address:
            check_reachable(cfg.ray_address)
        limit = cfg.workers if cfg.ray_address else 0
        return RayEngine(cfg.num_workers, cfg.ray_address, cfg.max_retries, limit)
    raise ValueError(f"ENGINE must be 'local' or 'ray', got '{cfg.engine}'")
