"""Shards as readers see them (webdataset, DALI), resume after kill -9, and --verify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from shards.inspect import main as inspect_main
from shards.tario import read_index
from tests.faults.corrupt import copy_set, downgrade_to_v1


def shard_files(out: Path) -> dict[str, bytes]:
    """Every output file that must be identical between runs."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in (".tar", ".idx", ".json", ".parquet"):
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


def tar_samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_webdataset_package_reads_the_shards(sample_shards: Path) -> None:
    import webdataset as wds

    tars = sorted(str(p) for p in (sample_shards / "train").glob("*.tar"))
    expected = tar_samples(sample_shards, "train")
    seen = {}
    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        offsets = np.frombuffer(sample["offsets"], "<i8")
        assert meta["key"] == sample["__key__"] and offsets[-1] == len(sample["mjpeg"])
        seen[sample["__key__"]] = sample["mjpeg"]
    assert seen.keys() == expected.keys()
    assert all(seen[k] == expected[k]["mjpeg"] for k in seen)


def test_dali_webdataset_reader_uses_the_written_index(sample_shards: Path) -> None:
    from nvidia.dali import fn, pipeline_def, types

    card = json.loads((sample_shards / "dataset.json").read_text())
    shards = card["splits"]["train"]["shards"]
    tars = [str(sample_shards / "train" / s["tar"]) for s in shards]
    idxs = [str(sample_shards / "train" / s["index"]) for s in shards]
    total = card["splits"]["train"]["samples"]

    @pipeline_def(batch_size=total, num_threads=1, device_id=None)
    def read():
        mjpeg, offsets, meta = fn.readers.webdataset(
            paths=tars, index_paths=idxs, ext=["mjpeg", "offsets", "json"],
            dtypes=[types.UINT8, types.INT64, types.UINT8], missing_component_behavior="error")
        return mjpeg, offsets, meta

    pipe = read()
    pipe.build()
    mjpeg, offsets, meta = pipe.run()
    expected = tar_samples(sample_shards, "train")
    keys = set()
    for i in range(total):
        m = json.loads(bytes(np.asarray(meta[i])))
        keys.add(m["key"])
        assert bytes(np.asarray(mjpeg[i])) == expected[m["key"]]["mjpeg"]
        off = np.asarray(offsets[i])
        assert off.dtype == np.int64 and len(off) == m["num_frames"] + 1
    assert keys == expected.keys()
    assert sum(len(read_index(i)) for i in idxs) == total
    # format v2 holds a fourth member per sample, which the reader above was not asked for
    assert all([m.ext for m in sample] == ["mjpeg", "offsets", "crc", "json"] for i in idxs for sample in read_index(i))


@pytest.mark.parametrize("mode", ["whole", "range"])
def test_the_loader_delivers_the_same_batches_from_v2_and_v1_shards(sample_shards: Path, tmp_path: Path,
                                                                     mode: str) -> None:
    import torch

    from pipeline.config import PipelineConfig
    from pipeline.loader import build_loader

    v1 = downgrade_to_v1(copy_set(sample_shards, tmp_path / "v1"))
    cfg = PipelineConfig(global_size=16, local_size=16, num_local=0, read_mode=mode)
    batches = [list(build_loader(cfg, root, batch_size=4, device="cpu").iter_epoch(0)) for root in (sample_shards, v1)]
    assert len(batches[0]) == len(batches[1]) == 18 // 4
    for new, old in zip(*batches):
        assert new.keys() == old.keys()
        for name, value in new.items():
            assert torch.equal(value, old[name]) if isinstance(value, torch.Tensor) else value == old[name], name


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(sample_root: Path, sample_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "shards", "--data", "kinetics", "--root", str(sample_root), "--out", str(out),
           "--max-per-shard", "4"]
    proc = subprocess.Popen(cmd + ["--workers", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/*.stats.json"))) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists(), "the run finished before it could be killed"
    finished_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.tar")}
    assert finished_before, "no shard had finished when the run was killed"
    result = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "shards already done" in result.stderr
    for p in out.glob("*/*.tar"):  # finished shards were not redone
        if p.name in finished_before:
            assert p.stat().st_mtime_ns == finished_before[p.name]
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert shard_files(out) == shard_files(sample_shards)


def test_rerun_of_a_finished_job_changes_nothing_and_other_settings_are_refused(sample_root: Path, sample_shards: Path,
                                                                                tmp_path: Path, capsys) -> None:
    from shards.cli import main as shards_main

    out = tmp_path / "copy"
    shutil.copytree(sample_shards, out)
    before = shard_files(out)
    args = ["--data", "kinetics", "--root", str(sample_root), "--out", str(out), "--max-per-shard", "4"]
    assert shards_main(args) == 0
    assert shard_files(out) == before
    assert shards_main(args[:-1] + ["3"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_inspect_verify_passes_and_catches_damage(sample_shards: Path, tmp_path: Path, capsys) -> None:
    assert inspect_main([str(sample_shards), "--verify"]) == 0
    assert "ok train" in capsys.readouterr().out
    out = tmp_path / "damaged"
    shutil.copytree(sample_shards, out)
    idx = sorted((out / "train").glob("*.idx"))[0]
    lines = idx.read_text().splitlines()
    parts = lines[1].split()
    parts[1] = str(int(parts[1]) + 512)  # point the first member somewhere else
    idx.write_text("\n".join([lines[0], " ".join(parts), *lines[2:]]) + "\n")
    assert inspect_main([str(out), "--verify"]) == 1
    assert "index disagrees with the tar" in capsys.readouterr().out
