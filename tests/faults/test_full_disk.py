"""A full disk: the sharder stops with one clear line, no half shard looks finished, and the
resume after space is freed loses nothing.

Two ways to run out of space: a small tmpfs mounted for the test (needs root and ``mount``;
skipped otherwise) whose free space a filler file takes, and a file size limit
(``RLIMIT_FSIZE``, any user) that makes writes past it fail with EFBIG, like a quota.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from tests.faults.common import (
    check_stopped_cleanly,
    fill_disk,
    output_files,
    run_sharder,
    sharder_cmd,
)

FILE_LIMIT = 240 * 2**10  # the largest one-clip shard of the sample is ~280 KB, the smallest ~160 KB


@pytest.fixture(scope="module")
def reference(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The output files of an undisturbed run."""
    out = tmp_path_factory.mktemp("full_disk_ref") / "out"
    assert shards_main(sharder_cmd(sample_root, out, "--workers", "2")[3:]) == 0
    return output_files(out)


def test_full_disk_stops_clearly_and_resume_after_freeing_space_loses_nothing(
        sample_root: Path, small_disk: Path, reference: dict[str, bytes], capsys) -> None:
    filler = fill_disk(small_disk)
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
