"""Helpers shared by the fault tests: running the sharder and comparing outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from shards.cli import main as shards_main
from shards.shard import shard_is_finished
from shards.storage import Output
from shards.tario import check_index_against_tar

DISK_BYTES = 32 * 2**20  # the small disk of the full-disk tests
FREE_BYTES = 900 * 2**10  # space left on it: a few one-clip shards of the sample at FPS=3


TWO_PER_SHARD = ["--splits", "val,test", "--fps", "0", "--max-per-shard", "2", "--workers", "2"]  # 5 shards


def shard_locally(root: Path, out: Path, args: list[str]) -> Path:
    """Run the sharder in this process (ENGINE=local) on the Kinetics-layout ``root``; returns ``out``."""
    assert shards_main(["--data", "kinetics", "--root", str(root), "--out", str(out), *args]) == 0
    return out


def sharder_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    """``python -m shards`` on the val and test splits of a Kinetics-layout ``root``, 1 clip a shard."""
    return [sys.executable, "-m", "shards", "--data", "kinetics", "--root", str(root), "--out", str(out),
            "--splits", "val,test", "--max-per-shard", "1", *extra]


def run_sharder(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the sharder to the end; returns the completed process (text output)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def output_files(out: Path) -> dict[str, bytes]:
    """Every output file that must be identical between two runs of the same job."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".tar", ".idx", ".json", ".parquet")}


def assert_finished_shards_are_whole(out: Path) -> int:
    """Every shard with a stats file (the "finished" marker) is complete; returns how many there are."""
    finished = 0
    for stats_path in out.glob("*/*.stats.json"):
        name = stats_path.name.removesuffix(".stats.json")
        stats = shard_is_finished(Output.open(str(out)), stats_path.parent.name, name)
        assert stats is not None, f"{stats_path}: marker of a shard that is not whole"
        if stats["samples"]:
            tar = stats_path.parent / stats["shard"]
            samples = check_index_against_tar(stats_path.parent / stats["index"], tar)
            with tarfile.open(tar) as t:
                assert len(t.getnames()) == 4 * stats["samples"] == 4 * len(samples)  # mjpeg, offsets, crc, json
        finished += 1
    return finished


def card(out: Path) -> dict:
    """The dataset card of a finished job."""
    return json.loads((out / "dataset.json").read_text())


def fill_disk(disk: Path, free: int = FREE_BYTES) -> Path:
    """Leave ``free`` bytes free on the DISK_BYTES disk ``disk``; returns the filler file (delete it to free space)."""
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (DISK_BYTES - free))
    return filler


def check_stopped_cleanly(out: Path, err: str, reason: str) -> None:
    """One error line naming a file the sharder was writing and the reason; no half shard looks finished."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: disk full while writing {out}/") and f"({reason})" in lines[0]
    assert "re-run the same command to resume" in lines[0]
    assert not (out / "dataset.json").exists()
    assert assert_finished_shards_are_whole(out) >= 1
