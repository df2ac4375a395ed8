"""The loader profiler end to end on the sample shards (tiny sizes): table, JSON schema, PNG."""

from __future__ import annotations

import json

import pytest
import torch

from tools.profile_loader import main

KEYS = {"triplets_per_s", "frames_per_s", "decoded_per_delivered", "first_batch_s", "cpu_util",
        "peak_rss_mb", "bytes_read_per_triplet", "cpu_ms_per_triplet"}


@pytest.mark.slow
def test_profile_loader_writes_figures(sample_shards, sample_root, tmp_path) -> None:
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    code = main(["--shards", str(sample_shards), "--loaders", "dali,dali-range,mp4", "--workloads", "simple",
                 "--batches", "1", "--repeats", "1", "--warmup", "0", "--batch", "4", "--root", str(sample_root),
                 "--json", str(out), "--png", str(png), "global_size=32", "local_size=16"])
    assert code == 0 and png.stat().st_size > 1000
    report = json.loads(out.read_text())
    assert report["ceiling_triplets_per_s"] > 0 and report["device"].startswith("cpu")
    loaders = report["workloads"]["simple"]["loaders"]
    for name in ("dali", "dali-range", "mp4"):
        assert set(loaders[name]) >= KEYS and loaders[name]["triplets_per_s"] > 0
    assert loaders["dali"]["decoded_per_delivered"] == 1.0
    assert loaders["mp4"]["decoded_per_delivered"] >= 1.0
    # range reads only the 3 JPEGs: fewer bytes than whole samples (one batch of 4 here, so the
    # process's other reads weigh in: ~0.5 measured, bounded loosely)
    assert loaders["dali-range"]["bytes_read_per_triplet"] < 0.8 * loaders["dali"]["bytes_read_per_triplet"]
    assert report["loaders"] == {}  # no tcore workload was asked for
    ratio = report["ratios"]["simple"]
    assert ratio["dali/mp4"] == pytest.approx(loaders["dali"]["triplets_per_s"] / loaders["mp4"]["triplets_per_s"])
    assert "dali-range/ceiling" in ratio and "dali/dali-range" not in ratio


@pytest.mark.slow
def test_dali_operator_costs_run(sample_shards) -> None:
    from pipeline.bench import frame_bytes
    from pipeline.dataset import open_split
    from tools.dali_op_costs import operator_costs

    costs = operator_costs(frame_bytes(open_split(sample_shards, "train", verify_offsets=False), 20), 0.05)
    assert len(costs) == 12 and all(0 < ms < 1000 for ms in costs.values())
    assert costs["resize to 224², nearest"] < costs["resize to 224², cubic"]  # 0.09 vs 1.1 ms measured


@pytest.mark.slow
def test_profile_measures_the_host_side(sample_shards, tmp_path) -> None:
    """dali-host (range reads, the GPU presets') and dali-host-whole: the GPU graph's CPU nodes alone."""
    out = tmp_path / "h.json"
    code = main(["--shards", str(sample_shards), "--loaders", "dali-host,dali-host-whole,dali-range",
                 "--workloads", "tcore", "--batches", "2", "--repeats", "1", "--warmup", "1", "--batch", "4",
                 "--json", str(out), "global_size=32", "local_size=16", "num_local=2"])
    assert code == 0
    report = json.loads(out.read_text())
    loaders = report["workloads"]["tcore"]["loaders"]
    for name in ("dali-host", "dali-host-whole"):
        assert set(loaders[name]) >= KEYS and loaders[name]["triplets_per_s"] > 0
        assert loaders[name]["cpu_ms_per_triplet"] > 0
    # the host side is a small part of what the all-CPU graph spends
    assert report["ratios"]["tcore"]["dali-host/dali-range cpu"] < 0.5
    assert loaders["dali-host"]["bytes_read_per_triplet"] < 0.5 * loaders["dali-host-whole"]["bytes_read_per_triplet"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_profile_refuses_cuda_without_a_gpu(sample_shards, tmp_path, capsys) -> None:
    out = tmp_path / "never.json"
    code = main(["--shards", str(sample_shards), "--device", "cuda", "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "CUDA" in err[0] and not out.exists()


def test_parallelism_is_capped_on_big_hosts(monkeypatch) -> None:
    """On a 128-core host the profiler starts what the work needs, not a process per core."""
    from tools.profile_loader import MAX_PARALLEL, parse_args

    monkeypatch.setattr("os.cpu_count", lambda: 128)
    args = parse_args(["--shards", "x"])
    assert args.workers == MAX_PARALLEL == 16 and args.warmup == 2 * 16 + 2
    assert parse_args(["--shards", "x", "--batch", "4"]).workers == 4  # at most one per sample
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert parse_args(["--shards", "x"]).workers == 2


@pytest.mark.slow
def test_profile_clip_workloads(clip_shards, sample_root, tmp_path) -> None:
    """Clip workloads: samples/s with their frames per sample; decoded/delivered 1 (CSTP), 2/3
    (DualVar: c3 reuses c1's frames); the torch peer decodes each distinct frame once (at most
    1), the mp4 peer decodes from keyframes (at least 1); dali-host is skipped."""
    out = tmp_path / "clips.json"
    code = main(["--shards", str(clip_shards), "--root", str(sample_root), "--loaders", "dali-range,torch,mp4,dali-host",
                 "--workloads", "cstp,dualvar",
                 "--batches", "1", "--repeats", "1", "--warmup", "0", "--batch", "2", "--json", str(out),
                 "clip_size=16", "cstp.frames=4", "dualvar.frames=4"])
    assert code == 0
    report = json.loads(out.read_text())
    cstp, dualvar = (report["workloads"][w]["loaders"] for w in ("cstp", "dualvar"))
    assert set(cstp["dali-range"]) >= KEYS and "skipped" in cstp["dali-host"]
    for name in ("torch", "mp4"):
        assert set(cstp[name]) >= KEYS | {"decoder"} and set(dualvar[name]) >= KEYS
        assert cstp[name]["frames_per_s"] == pytest.approx(8 * cstp[name]["triplets_per_s"])
    assert 0 < cstp["torch"]["decoded_per_delivered"] <= 1.0 and dualvar["torch"]["decoded_per_delivered"] <= 2 / 3
    assert cstp["mp4"]["decoded_per_delivered"] >= 1.0
    assert cstp["dali-range"]["frames_per_s"] == pytest.approx(8 * cstp["dali-range"]["triplets_per_s"])
    assert cstp["dali-range"]["decoded_per_delivered"] == 1.0
    assert dualvar["dali-range"]["decoded_per_delivered"] == pytest.approx(2 / 3)
