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
from evaluation.finetune import Classifier, finetune, video_probabilities
from evaluation.train_loop import RunDir
from tools.eval_action import main

CPU = torch.device("cpu")
SHORT = ClipConfig(clip_len=8, stride=2, num_clips=2)


def test_train_clips_deterministic_and_cut_as_stated(action_shards) -> None:
    videos, _ = ActionShards(action_shards["ucf101"]).videos(1, "train")
    src = ShardClipSource(SHORT, workers=2)
    a = list(src.train_batches(videos, 4, epoch=3, seed=5))
    b = list(src.train_batches(videos, 4, epoch=3, seed=5, skip=2))
    assert len(a) == 5 and len(b) == 3  # 20 videos, batch 4
    assert a[0][0].shape == (4, 3, 8, 112, 112) and a[0][0].dtype == torch.float32
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
    shards = ActionShards(action_shards["hmdb51"])
    train, _ = shards.videos(1, "train")
    src = ShardClipSource(dataclasses.replace(SHORT, jitter_p=0.0))
    labels = torch.tensor([v.label for v in train])

    def loss(probs: np.ndarray) -> float:
        return float(torch.nn.functional.nll_loss(torch.from_numpy(probs).clamp_min(1e-8).log(), labels))

    backbone, _ = build_backbone("tiny3d", None, CPU)
    torch.manual_seed(0)
    before = loss(video_probabilities(Classifier(backbone, 5), src, train, 8, 2, CPU))
    cfg = FinetuneConfig(clips=dataclasses.replace(SHORT, jitter_p=0.0), batch_size=4, epochs=5, milestones=(),
                         lr=0.05, test_batch_videos=8)
    summary, probs = finetune(backbone, train, train, 5, src, cfg, RunDir(tmp_path, {}), CPU)
    assert summary["complete"] and summary["steps"] == 5 * (len(train) // 4)
    assert before > 1.5  # ~ log(5): the fresh linear layer is near uniform
    assert loss(probs) < before - 0.15, (before, loss(probs))  # measured: 1.61 -> 1.33


def test_cli_finetune_resumes_exactly(action_shards, tmp_path: Path, capsys) -> None:
    common = ["--task", "ucf101-finetune", "--shards", str(action_shards["ucf101"]), "--backbone", "tiny3d",
              "--device", "cpu", "finetune.batch_size=4", "finetune.epochs=2", "finetune.milestones=[1]",
              "finetune.clips.clip_len=8", "finetune.clips.num_clips=2", "finetune.checkpoint_every=2"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    printed = capsys.readouterr().out
    assert "82.0" in printed and "70.5" in printed and "not comparable" in printed
    assert main([*common, "--out", str(tmp_path / "cut"), "finetune.max_steps=3"]) == 0
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["steps"] == 3 and not cut["complete"]
    assert main([*common, "--out", str(tmp_path / "cut")]) == 0
    assert "resuming from ckpt_000000003.pth" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    again = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert whole == again and whole["complete"] and whole["steps"] == 10
    assert 0 <= whole["top1"] <= whole["top5"] <= 1 and whole["backbone"] == "tiny3d"

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

    torch.manual_seed(1)
    ref = r3d_18(weights=None).eval()
    path = tmp_path / "r3d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    assert detect_backbone(path) == "r3d_18"
    model, name = build_backbone("auto", str(path), CPU)
    x = torch.randn(2, 3, 4, 32, 32)
    ref.fc = torch.nn.Identity()
    with torch.inference_mode():
        out = model.forward_features(x)
        assert name == "r3d_18" and out["pooled"].shape == (2, 512) and out["map"].shape[:2] == (2, 512)
        torch.testing.assert_close(out["pooled"], ref(x))
    tiny = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny3d", None, CPU)[0].state_dict(), tiny)
    with pytest.raises(ValueError, match=r"tiny.pth: key/shape mismatch"):
        build_backbone("r3d_18", str(tiny), CPU)
    with pytest.raises(ValueError, match=r"tiny.pth: cannot tell which backbone"):
        build_backbone("auto", str(tiny), CPU)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pth: not a readable torch checkpoint"):
        build_backbone("tiny3d", str(tmp_path / "junk.pth"), CPU)
