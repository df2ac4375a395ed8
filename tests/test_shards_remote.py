"""A remote OUT (fsspec URL): the same bytes as a local OUT, resumable after a kill or lost files,
upload failures as one-line errors. ``file://`` runs everywhere; ``s3://`` runs against a local
S3-compatible server when the ``remote`` extra (s3fs, moto) is installed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from shards.inspect import main as inspect_main
from tests.faults.common import (
    TWO_PER_SHARD,
    assert_finished_shards_are_whole,
    output_files,
    run_sharder,
)

ARGS = TWO_PER_SHARD



def cmd(root: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shards", "--data", "kinetics", "--root", str(root), "--out", out, *ARGS, *extra]


def staged_files(stage: Path) -> list[Path]:
    return [p for p in stage.rglob("*") if p.is_file()] if stage.exists() else []


def test_file_url_output_equals_local_and_resumes_after_lost_files(sample_root: Path, tmp_path: Path, capsys,
                                                                   val_test_reference: dict[str, bytes]) -> None:
    remote, stage = tmp_path / "remote", tmp_path / "stage"
    args = cmd(sample_root, f"file://{remote}", "--stage", str(stage))[3:]
    assert shards_main(args) == 0
    assert output_files(remote) == val_test_reference
    assert not staged_files(stage)  # every staged file was uploaded, then removed
    assert f"see file://{remote}/rejected.parquet" in capsys.readouterr().err.replace("\n", "")

    (remote / "val" / "val-000001.stats.json").unlink()  # a shard without its marker is redone
    (remote / "test" / "test-000000.tar").unlink()  # a marker whose tar is gone: redone
    (remote / "dataset.json").unlink()
    stale = stage / f"shards-stage-{hashlib.sha1(f'file://{remote}'.encode()).hexdigest()[:12]}" / "val"
    stale.mkdir(parents=True)  # leftovers of an interrupted run in the stage: discarded
    (stale / "val-000002.tar").write_bytes(b"stale")
    (stale / "val-000002.idx.tmp").write_bytes(b"stale")
    assert shards_main(args) == 0
    assert "(3 shards already done)" in capsys.readouterr().err
    assert output_files(remote) == val_test_reference and not staged_files(stage)

    assert inspect_main([f"file://{remote}", "--verify"]) == 0
    assert "ok val: 5 samples" in capsys.readouterr().out


@pytest.mark.slow
def test_kill_9_during_a_file_url_run_then_resume(sample_root: Path, tmp_path: Path,
                                                  val_test_reference: dict[str, bytes]) -> None:
    remote, stage = tmp_path / "remote", tmp_path / "stage"
    job = cmd(sample_root, f"file://{remote}", "--stage", str(stage), "--workers", "1")
    proc = subprocess.Popen(job, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and not list(remote.glob("*/*.stats.json")) and time.time() < deadline:
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (remote / "dataset.json").exists(), "the run ended before the kill"
    assert 1 <= assert_finished_shards_are_whole(remote) < 5  # a remote marker means a whole shard
    done = run_sharder(job)
    assert done.returncode == 0, done.stderr
    assert output_files(remote) == val_test_reference
    assert not staged_files(stage) and not list(remote.rglob("*.tmp"))


def test_failed_upload_is_one_line_error_and_the_resume_completes(sample_root: Path, tmp_path: Path,
                                                                  val_test_reference: dict[str, bytes]) -> None:
    remote, stage = tmp_path / "remote", tmp_path / "stage"
    remote.mkdir()
    (remote / "val").write_bytes(b"")  # a file where the split's folder must go: every val upload fails
    job = cmd(sample_root, f"file://{remote}", "--stage", str(stage))
    failed = run_sharder(job)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1, failed.stderr
    assert lines[-1].startswith("error: upload of val/val-00000") and " failed 3 times (" in lines[-1]
    assert f"to file://{remote}/val/val-00000" in lines[-1] and "re-run the same command" in lines[-1]
    assert not (remote / "dataset.json").exists()
    (remote / "val").unlink()
    resumed = run_sharder(job)
    assert resumed.returncode == 0, resumed.stderr
    assert output_files(remote) == val_test_reference and not staged_files(stage)


@pytest.mark.slow
def test_ray_workers_upload_their_shards(sample_root: Path, tmp_path: Path,
                                        val_test_reference: dict[str, bytes]) -> None:
    pytest.importorskip("ray")
    remote = tmp_path / "remote"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = run_sharder(cmd(sample_root, f"file://{remote}", "--stage", str(tmp_path / "stage"), "--engine", "ray"),
                       env=env)
    assert done.returncode == 0, done.stderr
    assert output_files(remote) == val_test_reference


# ---------------------------------------------------------------- S3 (a local S3-compatible server)


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free local port with a bucket ``shards``; yields (environment, s3fs). Its
    state lives in this process, so one server serves the whole module."""
    s3fs = pytest.importorskip("s3fs", reason="the remote extra is not installed: pip install -e '.[remote]'")
    server_mod = pytest.importorskip("moto.server", reason="the remote extra is not installed: "
                                                           "pip install -e '.[remote]'")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | creds
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=creds["AWS_ENDPOINT_URL"],
                           skip_instance_cache=True)
    fs.mkdir("shards")
    try:
        yield env, fs
    finally:
        server.stop()


def bucket_files(fs, prefix: str) -> dict[str, bytes]:
    """The objects under ``prefix`` that a local run's output_files would hold, by relative name."""
    fs.invalidate_cache()
    names = [p for p in fs.find(prefix) if p.rsplit(".", 1)[-1] in ("tar", "idx", "json", "parquet")]
    return {p.removeprefix(prefix + "/"): fs.cat_file(p) for p in names}


@pytest.mark.slow
def test_s3_output_equals_local_resumes_and_inspects(sample_root: Path, tmp_path: Path, s3_server,
                                                     val_test_reference: dict[str, bytes]) -> None:
    env, fs = s3_server
    stage = tmp_path / "stage"
    job = cmd(sample_root, "s3://shards/k700", "--stage", str(stage))
    done = run_sharder(job, env=env)
    assert done.returncode == 0, done.stderr
    assert bucket_files(fs, "shards/k700") == val_test_reference and not staged_files(stage)

    fs.rm("shards/k700/val/val-000000.stats.json")
    fs.rm("shards/k700/dataset.json")
    resumed = run_sharder(job, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "(4 shards already done)" in resumed.stderr
    assert bucket_files(fs, "shards/k700") == val_test_reference

    inspected = run_sharder([sys.executable, "-m", "shards.inspect", "s3://shards/k700", "--verify"], env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert "ok val: 5 samples" in inspected.stdout and "ok test: 3 samples" in inspected.stdout


@pytest.mark.slow
def test_s3_bucket_that_does_not_exist_is_a_one_line_error(sample_root: Path, tmp_path: Path, s3_server) -> None:
    env, _ = s3_server
    failed = run_sharder(cmd(sample_root, "s3://nobucket/k700", "--stage", str(tmp_path / "stage")), env=env)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: upload of plan.json to s3://nobucket/k700/plan.json failed 3 times (FileNotFoundError: The specified "
        "bucket does not exist); fix the store or its credentials and re-run the same command to resume")
    inspected = run_sharder([sys.executable, "-m", "shards.inspect", "s3://nobucket/k700"], env=env)
    assert inspected.returncode == 1
    assert inspected.stderr.strip() == ("error: s3://nobucket/k700/dataset.json: no dataset card (is s3://nobucket/k700 "
                                        "a shard directory written by `python -m shards`, and has the job finished?)")
