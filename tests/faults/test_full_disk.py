"""A full disk: the sharder stops with one clear line, no half shard looks finished, and the
resume after space is freed loses nothing.

Two ways to run out of space: a small tmpfs mounted for the test (needs root and ``mount``;
skipped otherwise) whose free space a filler file takes, and a file size limit
(``RLIMIT_FSIZE``, any user) that makes writes past it fail with EFBIG, like a quota.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from tests.faults.common import (
    assert_finished_shards_are_whole,
    output_files,
    run_sharder,
    sharder_cmd,
)

DISK_BYTES = 4 * 2**20
FREE_BYTES = 900 * 2**10  # the val+test shards of the sample need ~1.7 MB
FILE_LIMIT = 240 * 2**10  # the largest one-clip shard of the sample is ~280 KB, the smallest ~160 KB


@pytest.fixture(scope="module")
def reference(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The output files of an undisturbed run."""
    out = tmp_path_factory.mktemp("full_disk_ref") / "out"
    assert shards_main(sharder_cmd(sample_root, out, "--workers", "2")[3:]) == 0
    return output_files(out)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A DISK_BYTES tmpfs mounted at a fresh folder (skips where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def check_stopped_cleanly(out: Path, err: str, reason: str) -> None:
    """One error line naming a file the sharder was writing and the reason; no half shard looks finished."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: disk full while writing {out}/") and f"({reason})" in lines[0]
    assert "re-run the same command to resume" in lines[0]
    assert not (out / "dataset.json").exists()
    assert assert_finished_shards_are_whole(out) >= 1


def test_full_disk_stops_clearly_and_resume_after_freeing_space_loses_nothing(
        sample_root: Path, small_disk: Path, reference: dict[str, bytes], capsys) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (DISK_BYTES - FREE_BYTES))
    out = small_disk / "out"
    args = sharder_cmd(sample_root, out, "--workers", "2")[3:]
    assert shards_main(args) == 1
    err = capsys.readouterr().err
    check_stopped_cleanly(out, err, os.strerror(28))
    assert "/val/val-" in err or "/test/test-" in err  # a worker's write failed: errno and shard carried over
    filler.unlink()
    assert shards_main(args) == 0
    assert "shards already done" in capsys.readouterr().err
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert output_files(out) == reference


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_file_size_limit_stops_clearly_and_resume_without_it_loses_nothing(
        sample_root: Path, tmp_path: Path, reference: dict[str, bytes]) -> None:
    out = tmp_path / "out"
    cmd = sharder_cmd(sample_root, out, "--workers", "2")
    limited = run_sharder(cmd, preexec_fn=_limit_file_size)
    assert limited.returncode == 1
    check_stopped_cleanly(out, limited.stderr, os.strerror(27))
    assert "/val/val-000000.tar" in limited.stderr  # the one shard over the limit
    resumed = run_sharder(cmd)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert output_files(out) == reference
