"""ENGINE=ray: the same bytes as ENGINE=local, killed workers retried a bounded number of times,
a running cluster joined by address. Needs the ``ray`` extra (skipped without it)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shards.cli import main as shards_main
from tests.faults.common import (
    TWO_PER_SHARD,
    assert_finished_shards_are_whole,
    check_stopped_cleanly,
    fill_disk,
    output_files,
    run_sharder,
)

pytest.importorskip("ray")

ARGS = TWO_PER_SHARD


def ray_env(**extra: str) -> dict[str, str]:
    """This environment without a RAY_ADDRESS of its own, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **extra}



def cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shards", "--data", "kinetics", "--root", str(root), "--out", str(out),
            *ARGS, "--engine", "ray", *extra]


def holder(path: Path) -> psutil.Process | None:
    """The process that has ``path`` open, if any."""
    for proc in psutil.process_iter():
        try:
            if any(f.path == str(path) for f in proc.open_files()):
                return proc
        except psutil.Error:
            continue
    return None


def kill_a_shard_worker(proc: subprocess.Popen, out: Path) -> str:
    """SIGKILL the Ray worker writing the first half-written shard seen; returns that shard's file name."""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        for partial in out.glob("*/*.tar.partial"):
            worker = holder(partial)
            if worker is not None and worker.pid != proc.pid:
                worker.send_signal(signal.SIGKILL)
                return partial.name
        time.sleep(0.01)
    raise AssertionError("no shard was being written by a worker")


def progress_counts(stderr: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"sharding: (\d+)/(\d+) clips", stderr)]


@pytest.mark.slow
def test_ray_output_equals_local_and_a_killed_worker_is_retried(sample_root: Path, tmp_path: Path,
                                                                val_test_reference: dict[str, bytes]) -> None:
    out = tmp_path / "ray"
    proc = subprocess.Popen(cmd(sample_root, out), env=ray_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed = kill_a_shard_worker(proc, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert output_files(out) == val_test_reference, f"after killing the worker writing {killed}"
    counts = progress_counts(err)  # the retried shard's clips are counted once
    assert counts and counts[-1] == (8, 8) and all(done <= total for done, total in counts)
    assert "with 2 workers (0 shards already done)" in err


@pytest.mark.slow
def test_ray_gives_up_after_max_retries_and_the_resume_completes(sample_root: Path, tmp_path: Path,
                                                                 val_test_reference: dict[str, bytes]) -> None:
    out = tmp_path / "ray"
    proc = subprocess.Popen(cmd(sample_root, out, "--max-retries", "0"), env=ray_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = kill_a_shard_worker(proc, out)
    _, err = proc.communicate(timeout=300)
    shard = killed.removesuffix(".tar.partial")
    assert proc.returncode == 1
    assert f"error: shard {shard}: its worker was lost on all 1 attempt(s)" in err and "re-run" in err
    assert not (out / "dataset.json").exists()
    assert_finished_shards_are_whole(out)
    resumed = run_sharder(cmd(sample_root, out)[:-2])  # the same job resumed on the local engine
    assert resumed.returncode == 0, resumed.stderr
    assert output_files(out) == val_test_reference


@pytest.mark.slow
def test_ray_full_disk_reaches_the_driver_with_its_errno_and_resume_completes(
        sample_root: Path, small_disk: Path, val_test_reference: dict[str, bytes]) -> None:
    filler = fill_disk(small_disk, free=5 * 2**20)  # the job needs ~14 MB, its shards ~2-3 MB each
    out = small_disk / "out"
    failed = run_sharder(cmd(sample_root, out), env=ray_env())
    assert failed.returncode == 1
    check_stopped_cleanly(out, failed.stderr, os.strerror(28))
    filler.unlink()
    resumed = run_sharder(cmd(sample_root, out)[:-2])  # the same job resumed on the local engine
    assert resumed.returncode == 0, resumed.stderr
    assert output_files(out) == val_test_reference


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-node Ray cluster started with ``ray start --head``; yields its address."""
    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    env = ray_env(RAY_AUTH_MODE="disabled")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "the Ray head did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        family = psutil.Process(head.pid).children(recursive=True)
        os.killpg(head.pid, signal.SIGKILL)
        for p in family:  # workers the raylet started in sessions of their own
            with contextlib.suppress(psutil.Error):
                p.kill()
        head.wait()


@pytest.mark.slow
def test_ray_joins_a_running_cluster_by_address(sample_root: Path, tmp_path: Path, ray_head: str,
                                                val_test_reference: dict[str, bytes]) -> None:
    out = tmp_path / "ray"
    done = run_sharder(cmd(sample_root, out, "--ray-address", ray_head), env=ray_env(RAY_AUTH_MODE="disabled"))
    assert done.returncode == 0, done.stderr
    assert output_files(out) == val_test_reference


def test_an_address_where_nothing_listens_is_a_one_line_error(sample_root: Path, tmp_path: Path, capsys) -> None:
    args = ["--data", "kinetics", "--root", str(sample_root), "--out", str(tmp_path / "out"), "--engine", "ray",
            "--ray-address", f"127.0.0.1:{free_port()}"]
    assert shards_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "nothing answers there" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
