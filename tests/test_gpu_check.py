"""``make gpu-check``: without a GPU it stops at once; its parts run on the CPU at toy sizes, so a
mistake in them shows here rather than first on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.device import cuda_usable
from tools.gpu_check import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(cuda_usable(), reason="checks the refusal on a machine where CUDA cannot start")
def test_without_a_gpu_it_stops_at_once(tmp_path):
    out = tmp_path / "check"
    res = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: gpu-check needs a usable CUDA GPU and found none")
    assert f"built for CUDA {torch.version.cuda}" in lines[0] and "driver" in lines[0]
    assert not out.exists()  # nothing written


def test_a_failed_part_is_exit_1_with_the_report(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "check"
    assert main(["--device", "cpu", "--quick", "--shards", str(tmp_path / "empty"), "--out", str(out)]) == 1
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["failures"] == [f"shards: ValueError: --shards {tmp_path / 'empty'}: no dataset.json there "
                                  f"(not a shards directory)"]
    assert (out / "gpu_check.png").is_file()


@pytest.mark.slow
def test_every_part_runs_on_the_cpu(sample_shards, tmp_path):
    out = tmp_path / "check"
    code = main(["--device", "cpu", "--quick", "--shards", str(sample_shards), "--out", str(out)])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, report["failures"]
    parts = report["parts"]
    assert list(parts) == ["shards", "loader", "bench_train", "ddp", "propagation", "action_features"]
    for mode in ("whole", "range"):
        entry = parts["loader"][mode]
        assert entry["batch"]["current_global"] == {"shape": [4, 2, 3, 64, 64], "dtype": "float32", "device": "cpu"}
        assert entry["batch"]["current_local"]["shape"] == [4, 4, 3, 32, 32]
        assert entry["triplets_per_s"] > 0 and entry["decoded_per_delivered"] == 1.0
    bench = parts["bench_train"]
    assert bench["flops_per_step"] > 0 and bench["peak_tflops"] is None  # a CPU has no bf16 peak here
    for r in bench["sources"].values():
        assert r["samples_per_s"] > 0 and 0 <= r["data_wait"] < 1 and r["peak_memory_gb"] > 0 and r["mfu"] is None
    ddp = parts["ddp"]
    assert ddp["world_size"] == 2 and len(set(ddp["param_checksums"])) == 1
    prop = parts["propagation"]
    assert prop["device"] == "cpu" and 0 <= prop["summary"]["J&F-Mean"] <= 1
    action = parts["action_features"]
    assert action["dali"]["device"] == action["pil"]["device"] == "cpu" and action["pil_over_dali_time"] > 0
    assert (out / "gpu_check.png").stat().st_size > 10_000
