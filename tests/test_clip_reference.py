"""The clip workloads' torch / mp4 reference loaders and the mp4 frame decoders, on the sample data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.clip_plan import layout_of, plan_batch
from pipeline.clip_reference import ClipBatches, make_clip
from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.params import BatchClock
from pipeline.range_source import EpochOrder, RangeSource, clip_stats
from pipeline.video_decode import (
    DECODERS,
    available_decoders,
    best_decoder,
    decoded_count,
    keyframes,
    pyav_frames,
    runs,
)


@pytest.mark.parametrize("workload", ["dualvar", "cstp", "localglobal"])
def test_torch_clip_loader_reads_the_plans_frames(clip_shards, workload) -> None:
    """Same seed: the torch loader's frames are the numpy plan's and the DALI range reader's, batch by batch."""
    cfg = PipelineConfig(workload=workload, clip_size=16, local_clip_size=8, seed=7, read_mode="range")
    split = open_split(clip_shards, "train")
    b = 3
    ds = ClipBatches("torch", cfg, split, b, epoch=1)
    order = EpochOrder(len(split.samples), cfg.seed, 0, 1, len(ds) * b)
    source = RangeSource(cfg, split, order, BatchClock(1, 0, len(ds)), b, (cfg.seed, 0), True)
    slots = layout_of(cfg).slots
    for batch in range(2):
        got = ds[batch]
        ids = order(1)[batch * b:(batch + 1) * b]
        st = clip_stats([split.samples[i] for i in ids])
        plan = plan_batch(cfg, (cfg.seed, 0), 1, batch, st[:, 0], st[:, 1], st[:, 2], st[:, 3])
        assert torch.equal(got["frame_idx"], torch.from_numpy(plan["frames"]))
        assert np.array_equal(source.read(1, batch)[-1][:, :slots], plan["frames"])
        for name in layout_of(cfg).labels:
            assert np.array_equal(got[name].numpy(), plan[name])
        assert (got["decoded"] <= slots).all() and (got["decoded"] >= 1).all()
    other = ClipBatches("torch", PipelineConfig(workload=workload, clip_size=16, local_clip_size=8, seed=8), split, b, 1)
    assert not torch.equal(other[0]["frame_idx"], ds[0]["frame_idx"])


def test_make_clip_geometry() -> None:
    """Whole-frame box at the frame's size: the frames normalised; x ends swapped: mirrored; a
    'mid' colour map adds its offset; a half box: that half."""
    cfg = PipelineConfig(contrast_pivot="mid")
    frames = torch.randint(0, 200, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255, torch.tensor(cfg.std).view(3, 1, 1, 1) * 255
    expect = (frames.permute(1, 0, 2, 3).float() - mean) / std
    plan = {"roi_start/0": np.array([[0.0, 0.0]]), "roi_end/0": np.array([[1.0, 1.0]])}
    assert torch.allclose(make_clip(frames, plan, 0, 0, 8, cfg), expect, atol=1e-5)
    flipped = {"roi_start/0": np.array([[0.0, 1.0]]), "roi_end/0": np.array([[1.0, 0.0]])}
    assert torch.allclose(make_clip(frames, flipped, 0, 0, 8, cfg), expect.flip(-1), atol=1e-5)
    shifted = {**plan, "colour/0": np.eye(3, dtype=np.float32)[None], "offset/0": np.full((1, 3), 10.0, np.float32)}
    assert torch.allclose(make_clip(frames, shifted, 0, 0, 8, cfg), expect + 10 / std, atol=1e-5)
    half = {"roi_start/0": np.array([[0.0, 0.5]]), "roi_end/0": np.array([[1.0, 1.0]])}
    right = (frames[..., 4:].permute(1, 0, 2, 3).float() - mean) / std  # [3, 4, 8, 4]
    small = torch.nn.functional.interpolate(right.reshape(12, 1, 8, 4), size=(4, 4), mode="bilinear", antialias=True)
    assert torch.allclose(make_clip(frames, half, 0, 0, 4, cfg), small.reshape(3, 4, 4, 4), atol=0.05)

def test_decoders_agree_with_pyav(sample_root) -> None:
    """Every installed decoder gives PyAV's pixels for the same frames; PyAV decodes what the
    keyframe rule says."""
    video = next(p for p in sorted(sample_root.rglob("*.mp4")) if "riding" in str(p))
    wanted = [3, 5, 7, 40, 41]
    ref, decoded = pyav_frames(video, wanted)
    keys = keyframes(str(video))
    assert decoded == decoded_count(wanted, keys) and sum(map(len, runs(wanted, keys))) == len(wanted)
    assert ref.shape[0] == len(wanted) and ref.dtype == torch.uint8
    for name in available_decoders():
        got, n = DECODERS[name][1](video, wanted)
        assert torch.equal(got, ref), name
        assert n == decoded
    assert best_decoder("auto", "triplets")[0] == "pyav" and best_decoder("pyav")[1] is pyav_frames
    with pytest.raises(ValueError, match="mp4 decoder 'nope'"):
        best_decoder("nope")


def test_mp4_clip_loader_plans_from_the_videos(clip_shards, sample_root) -> None:
    """The mp4 loader delivers the workload's shapes, frames inside each video, and counts what it decodes."""
    cfg = PipelineConfig(workload="cstp", clip_size=16, seed=3)
    split = open_split(clip_shards, "train")
    out = ClipBatches("mp4", cfg, split, 2, 0, root=sample_root)[0]
    f = cfg.cstp.frames
    assert out["clips"].shape == (2, 2, 3, f, 16, 16) and out["clips"].dtype == torch.float32
    assert (out["decoded"] >= len(set(out["frame_idx"][0].tolist()))).all()
    ids = EpochOrder(len(split.samples), cfg.seed, 0, 1, len(split.samples))(0)[:2]
    counts = torch.tensor([split.samples[i].num_frames for i in ids])
    assert (out["frame_idx"].max(1).values < counts).all()


@pytest.mark.parametrize("workload", ["cstp", "localglobal"])
def test_torch_clips_match_the_dali_graph(clip_shards, workload) -> None:
    """Same plan, same pixels up to resampling: the torch peer's clips are within ~1 8-bit level
    of DALI's (CPU, range mode) on average, with the recipe augmentations on."""
    from pipeline.loader import build_loader

    cfg = PipelineConfig(workload=workload, clip_size=32, local_clip_size=16, read_mode="range", range_workers=1,
                         num_threads=2)
    split = open_split(clip_shards, "train")
    dali = next(iter(build_loader(cfg, str(clip_shards), batch_size=2, device="cpu").iter_epoch(0)))
    ours = ClipBatches("torch", cfg, split, 2, 0)[0]
    names = list(layout_of(cfg).outputs)
    for name in names:
        levels = (dali[name].float().cpu() - ours[name]).abs() * 0.225 * 255
        assert levels.mean() < 1.5, (name, float(levels.mean()))
    assert torch.equal(dali[layout_of(cfg).labels[0]].cpu(), ours[layout_of(cfg).labels[0]])
