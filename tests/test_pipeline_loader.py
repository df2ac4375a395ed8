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
