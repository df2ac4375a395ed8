"""The DALI test-clip reader of action evaluation (run here on the CPU: the same graph as on a GPU,
with the decoder placed by one argument): the same clips as the PIL reader, in the same batches,
the same features through the command line, and a clear error for an unknown reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.action_config import ClipConfig
from evaluation.action_data import ActionShards
from evaluation.clip_source import ShardClipSource, make_clip_source
from evaluation.dali_clips import DaliClipSource, centre_roi, read_chunk
from tools.eval_action import main

CPU = torch.device("cpu")
SMALL = ClipConfig(clip_len=8, stride=3, num_clips=3, resize=(72, 96), crop=64)


def test_centre_roi_is_the_crop_of_the_resized_frame() -> None:
    start, end = centre_roi(ClipConfig(resize=(128, 171), crop=112))
    assert start == [8 / 128, 30 / 171] and end == [120 / 128, 142 / 171]  # round(59 / 2) = 30, as the PIL reader


def test_read_chunk_decodes_each_frame_once(action_shards) -> None:
    videos = ActionShards(action_shards["ucf101"]).videos(1, "test")[0][:2]
    cfg = ClipConfig(clip_len=16, stride=4, num_clips=10)  # 40-frame videos: the 10 clips overlap
    jpegs, index = read_chunk(videos, cfg)
    assert index.shape == (20, 16) and len(jpegs) == len(np.unique(index))
    assert len(jpegs) < 20 * 16 and index[:10].max() < index[10:].min()  # video-major, shared frames
    stored = videos[1].ref.frame_jpegs()
    assert bytes(jpegs[index[10, 0]]) == stored[0] and bytes(jpegs[index[19, -1]]) == stored[39]


def test_dali_clips_match_the_pil_reader(action_shards) -> None:
    videos = ActionShards(action_shards["ucf101"]).videos(1, "train")[0][:7]
    pil, dali = ShardClipSource(SMALL), DaliClipSource(SMALL, CPU)
    got = list(dali.test_batches(videos, 3))
    want = list(pil.test_batches(videos, 3))
    assert [len(c) for c, _ in got] == [3, 3, 1]  # a short last batch
    for (cd, xd), (cp, xp) in zip(got, want):
        assert [v.key for v in cd] == [v.key for v in cp]
        assert xd.shape == xp.shape == (len(cd) * 3, 3, 8, 64, 64) and xd.dtype == torch.float32
        diff = (xd - xp).abs()
        # different resampling filters and JPEG decoders: measured mean 0.0026, max 0.035 (two grey levels);
        # a crop shifted by one pixel differs by 0.09-0.18 on average
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1, (float(diff.mean()), float(diff.max()))
        assert float(xd.std()) > 0.3  # real frames, not a constant


def test_reader_choice_and_bad_reader() -> None:
    assert isinstance(make_clip_source(SMALL, "auto", CPU, 1), ShardClipSource)
    assert isinstance(make_clip_source(SMALL, "dali", CPU, 1), DaliClipSource)
    with pytest.raises(ValueError, match="clip_reader: 'nvdec' is not one of auto, dali, pil"):
        make_clip_source(SMALL, "nvdec", CPU, 1)


def test_cli_retrieval_with_the_dali_reader(action_shards, tmp_path: Path) -> None:
    small = ["features.clips.num_clips=2", "features.clips.clip_len=8", "features.batch_videos=8",
             "features.clips.resize=[72,96]", "features.clips.crop=64", "features.cache_dir="]
    base = ["--task", "hmdb51-retrieval", "--shards", str(action_shards["hmdb51"]), "--backbone", "tiny",
            "--device", "cpu", *small]
    assert main([*base, "--out", str(tmp_path / "dali"), "clip_reader=dali"]) == 0
    assert main([*base, "--out", str(tmp_path / "pil"), "clip_reader=pil"]) == 0
    d, p = (np.load(tmp_path / r / "features.npz") for r in ("dali", "pil"))
    for split in ("train", "test"):
        a, b = d[f"{split}_feats"], p[f"{split}_feats"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert a.shape == b.shape and a.shape[0] > 0 and cos.min() > 0.999, cos.min()
    assert "clip_reader: dali" in (tmp_path / "dali" / "config.yaml").read_text()


@pytest.mark.gpu
def test_dali_clips_on_the_gpu_match_the_pil_reader(action_shards) -> None:
    """nvJPEG (mixed decoder) and the GPU resize give the CPU reader's clips, on the device."""
    videos = ActionShards(action_shards["ucf101"]).videos(1, "test")[0][:5]
    dev = torch.device("cuda", 0)
    got = list(DaliClipSource(SMALL, dev).test_batches(videos, 2))
    want = list(ShardClipSource(SMALL).test_batches(videos, 2))
    assert [len(c) for c, _ in got] == [2, 2, 1]
    for (_, xd), (_, xp) in zip(got, want):
        assert xd.device.type == "cuda" and xd.shape == xp.shape
        diff = (xd.cpu() - xp).abs()
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.2, (float(diff.mean()), float(diff.max()))
