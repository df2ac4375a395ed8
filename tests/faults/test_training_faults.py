"""Training faults through the command line: each ends in a clear one-line message or a correct recovery.

Killed mid-epoch (kill -9) and resumed: ``tests/test_train.py::test_kill_and_resume_matches_straight_run``
(losses after the resume equal an uninterrupted run's). A rank or a node lost under torchrun:
``tests/faults/test_multinode.py``. Here: a truncated newest checkpoint, a missing shard, and
configs with an unknown key or a bad value.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import list_checkpoints, read_checkpoint
from model.device import cuda_usable
from tests.faults.launch import (
    PRESET,
    ROOT,
    RUN,
    free_port,
    records,
    summary,
    torchrun_cmd,
    train_env,
)
from tools.train import main

FAST = [*RUN, "train.max_steps=12"]


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread, as the subprocess runs get from OMP_NUM_THREADS=1 (DALI has its own threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_truncated_newest_checkpoint_falls_back_to_the_previous(sample_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one log message a line
    out = tmp_path / "run"
    args = ["--shards", str(sample_shards), "--config", PRESET, "--out", str(out), *FAST]
    assert main(args) == 0
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt_000000004.pth", "ckpt_000000008.pth", "ckpt_000000012.pth"]
    newest = ckpts[-1]
    os.truncate(newest, newest.stat().st_size // 3)  # a partial write of the newest checkpoint
    capsys.readouterr()

    assert main([*args, "train.max_steps=16"]) == 0
    log = capsys.readouterr().out
    assert f"checkpoint {newest} is unreadable" in log and "trying the previous one" in log
    assert f"resumed from {ckpts[1]} at step 8" in log
    assert summary(out)["step"] == 16
    read_checkpoint(newest)  # rewritten whole when the run passed step 12 again
    first, again = {}, {}
    for rec in records(out):  # steps 9-12 were logged by both runs: the redo matches exactly
        (again if rec["step"] in first else first)[rec["step"]] = rec
    assert sorted(first) == list(range(1, 17)) and sorted(again) == list(range(9, 13))
    for step in range(9, 13):
        assert again[step]["loss"] == first[step]["loss"], step


CKPT_FILE_LIMIT = 1 << 20  # 1 MiB: the logs fit, a checkpoint of the tiny preset (several MB) does not


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (CKPT_FILE_LIMIT, CKPT_FILE_LIMIT))


@pytest.mark.slow
def test_failed_background_checkpoint_write_is_one_line_and_resumable(sample_shards, tmp_path):
    """A checkpoint the writer thread cannot write (a quota, like a full disk) stops the run at the
    next checkpoint with one line; no partial file is left and the run resumes once there is room."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tools.train", "--shards", str(sample_shards), "--config", PRESET,
           "--out", str(out), *FAST]
    res = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300,
                         preexec_fn=_limit_file_size)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr[-2000:]
    assert errors[0].startswith(f"error: checkpoint {out / 'checkpoints' / 'ckpt_000000004.pth'} could not be "
                                f"written ({os.strerror(27)})")  # File too large, raised at the next save
    assert not list((out / "checkpoints").iterdir()) and not (out / "teacher.pth").exists()
    assert main(["--shards", str(sample_shards), "--config", PRESET, "--out", str(out), *FAST]) == 0
    assert summary(out)["step"] == 12 and len(list_checkpoints(out / "checkpoints")) == 3


@pytest.fixture()
def shards_missing_one(sample_shards, tmp_path) -> tuple[Path, Path]:
    """A copy of the sample shards with one training tar deleted; returns (shards, the missing tar)."""
    shards = tmp_path / "shards"
    shutil.copytree(sample_shards, shards)
    tar = shards / "train" / "train-000002.tar"
    tar.unlink()
    return shards, tar


def test_missing_shard_is_one_line_at_start(shards_missing_one, tmp_path):
    shards, tar = shards_missing_one
    cmd = [sys.executable, "-m", "tools.train", "--shards", str(shards), "--config", PRESET,
           "--out", str(tmp_path / "run"), *FAST]
    res = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tar) in lines[0] and "missing" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_missing_shard_under_torchrun_fails_without_hanging(shards_missing_one, tmp_path):
    shards, tar = shards_missing_one
    cmd = torchrun_cmd(shards, tmp_path / "run", port=free_port(), nproc=2)
    res = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert res.stderr.count(f"error: shard {tar}: listed in the dataset card but missing") == 2  # both ranks


needs_no_gpu = pytest.mark.skipif(cuda_usable(), reason="checks the refusal on a machine where CUDA cannot start")


@needs_no_gpu
def test_cuda_request_without_cuda_is_one_line_before_anything_is_written(sample_shards, tmp_path, capsys):
    code = main(["--shards", str(sample_shards), "--config", PRESET, "--out", str(tmp_path / "run"), *FAST,
                 "train.device=cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: device 'cuda' requested but CUDA cannot start")
    assert f"built for CUDA {torch.version.cuda}" in err[0] and "driver" in err[0]  # the wheel's CUDA, the driver
    assert not (tmp_path / "run").exists()  # no output dir, no config.yaml


@needs_no_gpu
@pytest.mark.slow
def test_two_processes_without_cuda_must_say_cpu(sample_shards, tmp_path):
    """`make train GPUS=2` on a machine where CUDA cannot start: every rank stops at once, nothing
    written; the same job with train.device=cpu runs (tests/test_train.py, tests/faults/)."""
    cmd = torchrun_cmd(sample_shards, tmp_path / "run", "train.device=auto", port=free_port(), nproc=2)
    res = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    line = "error: train.device=auto with 2 processes needs CUDA, which cannot start"
    assert res.stderr.count(line) == 2, res.stderr[-2000:]  # both ranks, one line each
    assert "say train.device=cpu" in res.stderr and f"built for CUDA {torch.version.cuda}" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key, reason", [
    ("train.base_lr=abc", "train.base_lr", "expected a number"),
    ("model.nope=1", "model.nope", "unknown config key"),
    ("train.lr=0.1", "train.lr", "unknown config key"),
    ("train.precision=fp8", "train.precision", "not one of"),
    ("train.dist_timeout_min=0", "train.dist_timeout_min", "must be > 0"),
    ("train.batch_size_per_gpu=2.5", "train.batch_size_per_gpu", "expected an integer"),
])
def test_bad_config_is_exit_2_with_one_line(sample_shards, tmp_path, capsys, override, key, reason):
    code = main(["--shards", str(sample_shards), "--config", PRESET, "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and reason in err[0], err
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_a_preset_file(sample_shards, tmp_path, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text(Path(PRESET).read_text().replace("  keep_checkpoints: 2\n", "  keep_checkpionts: 2\n"))
    assert main(["--shards", str(sample_shards), "--config", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.keep_checkpionts" in err[0]
