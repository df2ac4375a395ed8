"""kill -9 at seeded random moments of a sharding run (the whole job, or one worker), then resume."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shards.cli import main as shards_main
from tests.faults.common import assert_finished_shards_are_whole, output_files, run_sharder

SEED = 20240611
ROUNDS = 5


def finished_count(out: Path) -> int:
    return len(list(out.glob("*/*.stats.json")))


def wait_for(proc: subprocess.Popen, out: Path, shards: int, delay: float) -> None:
    """Wait until ``shards`` more shards are finished (or the run ends), then ``delay`` seconds."""
    target = finished_count(out) + shards
    deadline = time.time() + 120
    while proc.poll() is None and finished_count(out) < target and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)


def shard_worker(proc: subprocess.Popen) -> psutil.Process | None:
    """One of the job's worker processes (spawned children running shard tasks), once there is one."""
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:
            children = psutil.Process(proc.pid).children()
            workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        except psutil.Error:
            workers = []
        if workers:
            return workers[0]
        time.sleep(0.005)
    return None


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(sample_root: Path,
                                                                          tmp_path: Path) -> None:
    # every split at the source frame rate, 2 clips a shard: 17 shards, ~5 s uninterrupted on 2 cores
    args = ["--data", "kinetics", "--root", str(sample_root), "--fps", "0", "--max-per-shard", "2", "--workers", "2"]
    ref = tmp_path / "ref"
    assert shards_main(args + ["--out", str(ref)]) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shards", *args, "--out", str(out)]
    rng = random.Random(SEED)
    interrupted, worker_kills, moments = 0, 0, []
    for round_ in range(ROUNDS):
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if round_ == 0:  # early: imports, source discovery, size calibration, planning
            time.sleep(rng.uniform(0.1, 0.8))
        else:  # after 0 to 2 more finished shards, plus a little
            wait_for(proc, out, rng.randint(0, 2), rng.uniform(0.0, 0.3))
        worker = shard_worker(proc) if round_ == 1 else None
        if worker:  # one worker dies: the job stops with a clear message, nothing half-done looks done
            worker.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and "a worker process died" in err and "re-run" in err
            worker_kills += 1
        else:
            with contextlib.suppress(ProcessLookupError):  # the run may have ended before this moment
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        interrupted += not (out / "dataset.json").exists()
        moments.append((finished_count(out), len(list(out.rglob("*.partial")))))
        assert_finished_shards_are_whole(out)
    # (shards finished, shards half-written) after each kill
    assert interrupted >= 4 and worker_kills == 1, moments
    done = run_sharder(cmd)
    assert done.returncode == 0, done.stderr
    assert "shards already done" in done.stderr
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert output_files(out) == output_files(ref)
