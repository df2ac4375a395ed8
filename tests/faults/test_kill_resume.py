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

from tests.faults.common import (
    assert_finished_shards_are_whole,
    output_files,
    run_sharder,
    shard_locally,
)

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


ARGS = ["--fps", "0", "--max-per-shard", "2", "--workers", "2"]  # 17 shards, ~5 s uninterrupted on 2 cores


@pytest.fixture(scope="module")
def reference(sample_root: Path, tmp_path_factory) -> Path:
    """An uninterrupted run of the sample at the source frame rate, 2 clips a shard."""
    return shard_locally(sample_root, tmp_path_factory.mktemp("kill") / "ref", ARGS)


def _cmd(sample_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shards", "--data", "kinetics", "--root", str(sample_root), *ARGS, *extra,
            "--out", str(out)]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(sample_root: Path, reference: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = _cmd(sample_root, out)
    rng = random.Random(SEED)
    interrupted, moments = 0, []
    for round_ in range(ROUNDS):
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if round_ == 0:  # early: imports, source discovery, size calibration, planning
            time.sleep(rng.uniform(0.1, 0.8))
        else:  # after 0 to 2 more finished shards, plus a little
            wait_for(proc, out, rng.randint(0, 2), rng.uniform(0.0, 0.3))
        with contextlib.suppress(ProcessLookupError):  # the run may have ended before this moment
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        interrupted += not (out / "dataset.json").exists()
        moments.append((finished_count(out), len(list(out.rglob("*.partial")))))
        assert_finished_shards_are_whole(out)
    # (shards finished, shards half-written) after each kill
    assert interrupted >= 4, moments
    done = run_sharder(cmd)
    assert done.returncode == 0, done.stderr
    assert "shards already done" in done.stderr
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert output_files(out) == output_files(reference)


def _kill_one_worker(cmd: list[str], out: Path) -> subprocess.CompletedProcess:
    """Run ``cmd``, SIGKILL one of its shard workers once the first shard is done, wait for the end."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(proc, out, 1, 0.0)
    worker = shard_worker(proc)
    assert worker is not None, "no worker to kill: the run ended first"
    worker.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(sample_root: Path, reference: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _kill_one_worker(_cmd(sample_root, out), out)
    assert done.returncode == 0, done.stderr
    assert "warning: a worker process died; running its" in done.stderr
    assert output_files(out) == output_files(reference)  # same shards, manifests, counts: each clip once
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_with_no_retries_a_killed_worker_stops_the_job_and_the_resume_completes(sample_root: Path, reference: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = _cmd(sample_root, out, "--max-retries", "0")
    stopped = _kill_one_worker(cmd, out)
    assert stopped.returncode == 1 and "a worker process died on all 1 attempt(s)" in stopped.stderr
    assert "re-run" in stopped.stderr and sum(line.startswith("error:") for line in stopped.stderr.splitlines()) == 1
    assert_finished_shards_are_whole(out)
    done = run_sharder(cmd)
    assert done.returncode == 0, done.stderr
    assert output_files(out) == output_files(reference)
