"""The DALI loader on the sample shards: outputs, pixels, determinism, DDP sharding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.loader import build_loader
from tests.test_pipeline_sampling import check_sandwich

SMALL = {"global_size": 32, "local_size": 16, "num_local": 2}


def small(**kw) -> PipelineConfig:
    return PipelineConfig(**{**SMALL, **kw})


def epoch(cfg: PipelineConfig, shards, ep: int = 0, batch: int = 4, **kw) -> list[dict]:
    return list(build_loader(cfg, shards, batch_size=batch, device="cpu", **kw).iter_epoch(ep))


@pytest.mark.parametrize("mode", ["whole", "range"])
def test_shapes_dtypes_and_rule(sample_shards, mode: str) -> None:
    batches = epoch(small(read_mode=mode), sample_shards)
    assert len(batches) == 18 // 4
    labels = {s.key: s.label_id for s in open_split(sample_shards, "train").samples}
    for b in batches:
        assert b["current_global"].shape == (4, 2, 3, 32, 32)
        assert b["current_local"].shape == (4, 2, 3, 16, 16)
        assert b["past"].shape == b["future"].shape == (4, 2, 3, 32, 32)
        for name in ("current_global", "current_local", "past", "future"):
            assert b[name].dtype == torch.float32 and b[name].device.type == "cpu"
            assert torch.isfinite(b[name]).all() and b[name].abs().max() < 3.0  # normalised
        assert b["frame_idx"].shape == (4, 3) and b["frame_idx"].dtype == torch.int64
        assert b["num_frames"].shape == (4,) and b["label"].shape == (4,) and len(b["key"]) == 4
        assert [labels[k] for k in b["key"]] == b["label"].tolist()
        for (p, c, f), t in zip(b["frame_idx"].tolist(), b["num_frames"].tolist()):
            check_sandwich(p, c, f, t)
    # views differ from each other: independent crops and colour per view
    g = batches[0]["current_global"][0]
    assert not torch.allclose(g[0], g[1])
    assert not torch.allclose(batches[0]["past"][0, 0], batches[0]["past"][0, 1])


def test_simple_workload_and_half_dtypes(sample_shards) -> None:
    b = epoch(small(workload="simple", dtype="bfloat16"), sample_shards)[0]
    assert b["current_global"].shape == b["past"].shape == (4, 1, 3, 32, 32)
    assert b["current_local"].shape == (4, 0, 3, 16, 16)
    assert b["past"].dtype == torch.bfloat16
    b = epoch(small(dtype="float16", num_local=0), sample_shards)[0]
    assert b["current_global"].dtype == torch.float16 and b["current_local"].shape[1] == 0


def _frames_from_shard(sample_shards, key: str) -> list[np.ndarray]:
    """Every frame of a sample, decoded with PIL straight from its tar (independent of DALI)."""
    ref = next(s for s in open_split(sample_shards, "train").samples if s.key == key)
    return [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16) for jpeg in ref.frame_jpegs()]


@pytest.mark.parametrize("mode", ["whole", "range"])
def test_indices_match_decoded_pixels(sample_shards, mode: str) -> None:
    s = 128
    batch = epoch(small(read_mode=mode, raw_size=s, num_local=0), sample_shards, batch=6)[0]
    for key, idx, raw in zip(batch["key"], batch["frame_idx"].tolist(), batch["raw"].numpy()):
        frames = _frames_from_shard(sample_shards, key)
        for view, i in zip(raw.astype(np.int16), idx):
            diffs = [np.abs(view - f[:s, :s]).mean() for f in frames]
            assert diffs[i] < 1.5, f"{key}: frame {i} differs from the decoded view by {diffs[i]:.2f}"
            assert diffs[i] == min(diffs)  # and it is the closest frame of the clip


def test_deterministic_per_seed_rank_epoch(sample_shards) -> None:
    cfg = small()
    a, b = epoch(cfg, sample_shards, 1), epoch(cfg, sample_shards, 1)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        assert torch.equal(x["frame_idx"], y["frame_idx"])
        assert torch.equal(x["current_global"], y["current_global"])
        assert torch.equal(x["current_local"], y["current_local"]) and torch.equal(x["future"], y["future"])
    other_epoch, other_seed = epoch(cfg, sample_shards, 2), epoch(small(seed=5), sample_shards, 1)
    assert [x["key"] for x in other_epoch] != [x["key"] for x in a]
    assert not torch.equal(other_seed[0]["current_global"], a[0]["current_global"])
    resumed = list(build_loader(cfg, sample_shards, batch_size=4, device="cpu").iter_epoch(1, start_batch=2))
    assert len(resumed) == len(a) - 2
    assert resumed[0]["key"] == a[2]["key"] and torch.equal(resumed[0]["past"], a[2]["past"])


@pytest.mark.parametrize("mode", ["whole", "range"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_disjoint_and_equal(sample_shards, mode: str, world: int) -> None:
    cfg = small(read_mode=mode, num_local=0, global_size=16)
    loaders = [build_loader(cfg, sample_shards, batch_size=2, device="cpu", rank=r, world_size=world)
               for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1 and len(loaders[0]) == (18 // world) // 2
    seen = [[k for b in ld.iter_epoch(3) for k in b["key"]] for ld in loaders]
    assert all(len(keys) == len(loaders[0]) * 2 for keys in seen)
    flat = [k for keys in seen for k in keys]
    assert len(flat) == len(set(flat)), "a sample was read by two ranks in one epoch"


def test_too_few_samples_for_ranks_times_batch(sample_shards) -> None:
    with pytest.raises(ValueError, match="fewer than world_size"):
        build_loader(small(split="val"), sample_shards, batch_size=4, device="cpu", rank=0, world_size=2)
    with pytest.raises(ValueError, match="device"):
        build_loader(small(), sample_shards, batch_size=2, device="tpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batches_own_their_memory(sample_shards, dtype: str) -> None:
    it = build_loader(small(num_local=0, dtype=dtype), sample_shards, batch_size=2, device="cpu").iter_epoch(0)
    first = next(it)
    kept = {k: first[k].clone() for k in ("current_global", "past", "future")}
    for _ in it:  # later iterations reuse DALI's buffers; the batch handed out must not change
        pass
    assert all(torch.equal(first[k], v) for k, v in kept.items())


@pytest.mark.parametrize("mode", ["whole", "range"])
def test_every_batch_tensor_placement_and_dtype_on_cpu(sample_shards, mode: str) -> None:
    """Images on the loader's device in the configured dtype; bookkeeping int64 on the CPU."""
    b = epoch(small(read_mode=mode, dtype="bfloat16", raw_size=8), sample_shards)[0]
    want = {"current_global": torch.bfloat16, "current_local": torch.bfloat16, "past": torch.bfloat16,
            "future": torch.bfloat16, "raw": torch.uint8, "frame_idx": torch.int64, "num_frames": torch.int64,
            "label": torch.int64}
    assert set(b) == set(want) | {"key", "bad"}
    for name, dtype in want.items():
        assert b[name].device.type == "cpu" and b[name].dtype == dtype, name
    assert isinstance(b["key"], list) and all(isinstance(k, str) for k in b["key"])
    assert b["bad"] == []  # the sample shards are sound (range mode checks every frame it reads)


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and torch.equal(x["frame_idx"], y["frame_idx"])
        for name in ("current_global", "current_local", "past", "future"):
            assert torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("mode", ["whole", "range"])
def test_one_pipeline_across_epochs_and_exact_resume(sample_shards, mode: str) -> None:
    """Range mode: one pipeline serves consecutive epochs; whole mode: the next epoch's pipeline is
    built ahead. Either way an epoch, or a resume inside it, equals what a fresh loader makes."""
    cfg = small(read_mode=mode, num_local=1)
    loader = build_loader(cfg, sample_shards, batch_size=4, device="cpu")
    built = []
    make = loader.pipeline
    loader.pipeline = lambda *a: built.append(a) or make(*a)
    straight = [list(loader.iter_epoch(e)) for e in range(3)]
    assert built == ([(0, 0)] if mode == "range" else [(0,), (1,), (2,), (3,)])  # whole: one ahead of use
    _same_batches(straight[2], epoch(cfg, sample_shards, 2))
    resumed = list(build_loader(cfg, sample_shards, batch_size=4, device="cpu").iter_epoch(1, start_batch=2))
    _same_batches(resumed, straight[1][2:])
    assert [b["key"] for b in straight[0]] != [b["key"] for b in straight[1]]


def test_whole_mode_repeats_stay_in_the_rank_part(sample_shards) -> None:
    """Passes over the split (repeat) wrap inside each rank's part of the shards (stick_to_shard),
    with the shard list given once: ranks stay disjoint and each sees its part twice."""
    cfg = small(read_mode="whole", num_local=0, global_size=16, repeat=2)
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, sample_shards, batch_size=3, device="cpu", rank=rank, world_size=2)
        assert len(loader.inputs(0).files) == len(loader.split.tars)
        seen.append([k for b in loader.iter_epoch(0) for k in b["key"]])
    assert len(seen[0]) == len(seen[1]) == 18
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0])) == len(set(seen[1])) == 9


def test_range_reader_bounds_its_open_files(sample_shards, monkeypatch) -> None:
    import pipeline.range_source as rs

    loader = build_loader(small(read_mode="range", repeat=4), sample_shards, batch_size=6, device="cpu")
    free = loader.inputs(0).source
    monkeypatch.setattr(rs, "MAX_OPEN_FILES", 2)
    bounded = loader.inputs(0).source
    assert len(bounded.tars) > 2
    for b in range(len(loader)):
        got, want = bounded.read(0, b), free.read(0, b)
        assert bounded.open_files() <= 2
        assert all(np.array_equal(x, y) for g, w in zip(got[:3], want[:3]) for x, y in zip(g, w))
        assert np.array_equal(got[3], want[3])
    assert free.open_files() == len(free.tars)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["whole", "range"])
def test_gpu_batches_stay_on_device_without_host_sync(sample_shards, mode: str) -> None:
    """On a GPU: images on the device, bookkeeping on the CPU, no torch host synchronisation while
    batches are made and used; the same samples, frames and (up to decoder and resampler
    differences) pixels as the CPU graph, since every random draw is made on the host."""
    cfg = small(read_mode=mode, dtype="bfloat16")
    loader = build_loader(cfg, sample_shards, batch_size=4, device="cuda")
    sums = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(loader.iter_epoch(0))
        for b in batches:
            for name in ("current_global", "current_local", "past", "future"):
                assert b[name].device.type == "cuda" and b[name].dtype == torch.bfloat16, name
                sums.append(b[name].float().abs().mean())
            for name in ("frame_idx", "num_frames", "label"):
                assert b[name].device.type == "cpu" and b[name].dtype == torch.int64, name
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(s).item() for s in sums)
    cpu = epoch(small(read_mode=mode, dtype="bfloat16"), sample_shards)
    for g, c in zip(batches, cpu):
        assert g["key"] == c["key"] and torch.equal(g["frame_idx"], c["frame_idx"])
        diff = (g["current_global"].float().cpu() - c["current_global"].float()).abs().mean()
        assert diff < 0.1, float(diff)  # normalised units: ~6 grey levels
