"""Helpers for the training fault tests: torchrun command lines (as `make train` writes them),
process trees started in their own session, killed or stopped as a whole like a lost machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from model.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "configs" / "tcore_tiny_cpu.yaml")
STEPS = 40
# small and fast: 2 clips a batch, a checkpoint every 4 steps, every step logged; several CPU
# processes must ask for the CPU (train.device=auto in a multi-process job requires CUDA)
RUN = ["train.device=cpu", "train.batch_size_per_gpu=2", f"train.max_steps={STEPS}", "train.log_every=1",
       "train.tensorboard=false", "train.checkpoint_every_steps=4", "train.keep_checkpoints=3"]


def train_env(**extra: str) -> dict[str, str]:
    """The environment of a training process: repo on the path, 1 thread, wide log lines, no stray faults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCORE_FAULT_")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "1000", **extra}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(shards: Path, out: Path, *overrides: str, port: int, nnodes: int = 1, node_rank: int = 0,
                 nproc: int = 1, restarts: int = 0) -> list[str]:
    """The `make train` command line (static rendezvous at 127.0.0.1:port) with the fast settings."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
            "--max-restarts", str(restarts), "-m", "tools.train", "--shards", str(shards), "--config", PRESET,
            "--out", str(out), *RUN, *overrides]


class Node:
    """One launcher process and its workers, in a session of their own, output to ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def text(self) -> str:
        """Everything the node printed so far."""
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def workers(self) -> list[psutil.Process]:
        """The launcher's descendants (torchrun starts each worker in a session of its own)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to the launcher and every worker at once (a machine lost or frozen)."""
        procs = self.workers() + ([psutil.Process(self.proc.pid)] if self.proc.poll() is None else [])
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    def stop(self) -> None:
        """Kill whatever is left (teardown)."""
        if self.proc.poll() is None or self.workers():
            self.signal_all(signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def node_group(shards: Path, logs: Path) -> Iterator[Callable[..., Node]]:
    """``start(out, tag, *overrides, env=None, **torchrun_cmd options)`` starts one node training on
    ``shards``, its output in ``logs/<tag>.log``; whatever is still running is killed on exit."""
    started: list[Node] = []

    def start(out: Path, tag: str, *overrides: str, env: dict[str, str] | None = None, **kw) -> Node:
        node = Node(torchrun_cmd(shards, out, *overrides, **kw), logs / f"{tag}.log", env or train_env())
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()


def wait_for_checkpoint(out: Path, step: int, nodes: list[Node], timeout: float = 180) -> int:
    """Block until a checkpoint at or past ``step`` exists; returns its step. Fails if a node ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [int(p.stem.split("_")[1]) for p in list_checkpoints(out / "checkpoints")]
        if found and max(found) >= step:
            return max(found)
        ended = [n for n in nodes if n.proc.poll() is not None]
        assert not ended, f"a node ended before checkpoint {step}: {ended[0].text()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step >= {step} after {timeout} s")


def newest_checkpoint_step(out: Path) -> int:
    """Step of the newest checkpoint file in ``out/checkpoints``."""
    return int(list_checkpoints(out / "checkpoints")[-1].stem.split("_")[1])


def summary(out: Path) -> dict:
    """The run's summary.json (step, world size, per-rank parameter checksums)."""
    return json.loads((out / "summary.json").read_text())


def records(out: Path) -> list[dict]:
    """metrics.jsonl in order (a step redone after a resume appears twice)."""
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
