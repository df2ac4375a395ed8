"""Fine-tuning: the training clips (deterministic per seed and epoch, cut and flipped as stated),
a few steps lower the loss, and an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.action_config import ClipConfig, FinetuneConfig
from evaluation.action_data import ActionShards, random_clip
from evaluation.backbones import build_backbone
from evaluation.clip_source import ShardClipSource, normalise
from evaluation.finetune import finetune
from evaluation.train_loop import RunDir
from tools.eval_action import main

CPU = torch.device("cpu")
SHORT = ClipConfig(clip_len=8, stride=2, num_clips=2, resize=(72, 96), crop=64)  # small: CPU tests


def test_train_clips_deterministic_and_cut_as_stated(action_shards) -> None:
    videos, _ = ActionShards(action_shards["ucf101"]).videos(1, "train")
    src = ShardClipSource(SHORT, workers=2)
    a = list(src.train_batches(videos, 4, epoch=3, seed=5))
    b = list(src.train_batches(videos, 4, epoch=3, seed=5, skip=2))
    assert len(a) == 5 and len(b) == 3  # 20 videos, batch 4
    assert a[0][0].shape == (4, 3, 8, 64, 64) and a[0][0].dtype == torch.float32
    for (xa, ya), (xb, yb) in zip(a[2:], b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = next(iter(src.train_batches(videos, 4, epoch=4, seed=5)))
    assert not torch.equal(other[0], a[0][0])
    # without crop room, flip or jitter a training clip is exactly the resized frames of its indices
    plain = ShardClipSource(dataclasses.replace(SHORT, crop=128, resize=(128, 128), flip=False, jitter_p=0.0))
    flips = ShardClipSource(dataclasses.replace(SHORT, crop=128, resize=(128, 128), flip=True, jitter_p=0.0))
    flipped = 0
    for i, v in enumerate(videos):
        idx = random_clip(v.num_frames, 8, 2, np.random.default_rng([0, 0, i]))
        frames = plain.frames(v, idx)
        want = torch.from_numpy(np.stack([frames[j] for j in idx])).permute(3, 0, 1, 2)
        assert torch.equal(plain.train_clip(v, np.random.default_rng([0, 0, i])), want)
        got = flips.train_clip(v, np.random.default_rng([0, 0, i]))
        assert torch.equal(got, want) or torch.equal(got, want.flip(-1))
        flipped += int(not torch.equal(got, want))
    assert 0 < flipped < len(videos)


def test_finetuning_lowers_the_loss(action_shards, tmp_path: Path) -> None:
    train, _ = ActionShards(action_shards["hmdb51"]).videos(1, "train")
    clips = dataclasses.replace(SHORT, flip=False, jitter_p=0.0)
    backbone, _ = build_backbone("tiny", None, CPU)
    cfg = FinetuneConfig(clips=clips, batch_size=len(train), epochs=10, milestones=(), lr=0.05, test_batch_videos=8)
    summary, probs = finetune(backbone, train, train[:5], 5, ShardClipSource(clips), cfg, RunDir(tmp_path, {}), CPU)
    assert summary["complete"] and summary["steps"] == 10 and probs.shape == (5, 5)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] == pytest.approx(np.log(5), abs=0.05)  # the fresh linear layer is near uniform
    # full-batch steps on the 15 training videos (random clips): measured 1.59 -> 1.06
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses


def test_cli_finetune_resumes_exactly(action_shards, tmp_path: Path, capsys) -> None:
    common = ["--task", "ucf101-finetune", "--shards", str(action_shards["ucf101"]), "--backbone", "tiny",
              "--device", "cpu", "finetune.batch_size=4", "finetune.epochs=2", "finetune.milestones=[1]",
              "finetune.clips.clip_len=8", "finetune.clips.num_clips=2", "finetune.checkpoint_every=2",
              "finetune.clips.resize=[72,96]", "finetune.clips.crop=64"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    printed = capsys.readouterr().out
    assert "GENERATED data" in printed and "82.0" not in printed
    assert main([*common, "--out", str(tmp_path / "cut"), "finetune.max_steps=3"]) == 0
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["steps"] == 3 and not cut["complete"]
    assert main([*common, "--out", str(tmp_path / "cut")]) == 0
    assert "resuming from ckpt_000000003.pth" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    again = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert whole == again and whole["complete"] and whole["steps"] == 10
    assert 0 <= whole["top1"] <= whole["top5"] <= 1 and whole["backbone"] == "tiny"

    def losses(run: str) -> list[tuple]:
        recs = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in recs]

    assert losses("whole") == losses("cut") and len(losses("whole")) == 10
    assert losses("whole")[5][3] == pytest.approx(0.005)  # lr x 0.1 from epoch 1
    assert (tmp_path / "whole" / "predictions.csv").read_text() == (tmp_path / "cut" / "predictions.csv").read_text()


def test_normalise_layouts_agree() -> None:
    clips = np.random.default_rng(0).integers(0, 256, (2, 4, 6, 5, 3), dtype=np.uint8)
    a = normalise(clips)
    b = normalise(torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous(), channels_last=False)
    assert a.shape == (2, 3, 4, 6, 5) and torch.equal(a, b)
    assert float(a[0, 0, 0, 0, 0]) == pytest.approx((clips[0, 0, 0, 0, 0] / 255 - 0.485) / 0.229, abs=1e-5)


def test_r3d18_checkpoint_loads_and_matches_torchvision(tmp_path: Path) -> None:
    from torchvision.models.video import r3d_18

    from evaluation.backbones import detect_backbone
    from model.video3d import export_layout, tiny

    torch.manual_seed(1)
    ref = r3d_18(weights=None).eval()
    path = tmp_path / "r3d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    assert detect_backbone(path) == "r3d18"
    model, name = build_backbone("auto", str(path), CPU)
    x = torch.randn(2, 3, 4, 32, 32)
    ref.fc = torch.nn.Identity()
    with torch.inference_mode():
        out = model.forward_features(x)
        assert name == "r3d18" and out["pooled"].shape == (2, 512) and out["map"].shape[:2] == (2, 512)
        torch.testing.assert_close(out["pooled"], ref(x))
    # a clip method's export names its arch; its weights load
    torch.manual_seed(2)
    net = tiny()
    export = tmp_path / "export.pth"
    torch.save(export_layout(net, "dualvar"), export)
    loaded, name = build_backbone("auto", str(export), CPU)
    assert name == "tiny" and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                     net.state_dict().values()))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("conv5")}, partial)
    with pytest.raises(ValueError, match=r"partial.pth: key/shape mismatch: missing: conv5"):
        build_backbone("tiny", str(partial), CPU)
    with pytest.raises(ValueError, match=r"partial.pth: cannot tell which backbone"):
        build_backbone("auto", str(partial), CPU)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pth: not a readable torch checkpoint"):
        build_backbone("tiny", str(tmp_path / "junk.pth"), CPU)
