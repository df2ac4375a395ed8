"""Fine-tuning for action recognition: backbone + linear classifier trained end to end on clips.

Shapes: clips ``[N, 3, T, H, W]``, logits ``[N, C]``, per-video probabilities ``[V, C]``.

As DualVar's ``classifier.py --train_what ft`` with its paper scripts: every parameter in one SGD
group (momentum 0.9, weight decay 1e-3 on all of them, lr 0.05 x0.1 at epochs 50 and 100, 150
epochs, batch 16), the linear layer initialised N(0, 0.01) with zero bias, no dropout; training
clips from ``ClipSource.train_batches``. Test (``--temporal_ten_clip``): the clip source's 10
uniform clips per video, centre crop, softmax averaged over the clips, top-1 per video.
DualVar's training holds out 800 random training videos for validation, which plays no part in
its reported (last-epoch) result; here every training video is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.action_config import FinetuneConfig
from evaluation.action_data import Video
from evaluation.action_features import run_on_clips
from evaluation.clip_source import ClipSource, steps_per_epoch
from evaluation.linear_probe import topk_accuracy
from evaluation.train_loop import LoopSpec, RunDir, fit


class Classifier(nn.Module):
    """A backbone's pooled clip feature -> [dropout] -> linear."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone.forward_features(x)["pooled"]))


def video_probabilities(model: nn.Module, source: ClipSource, videos: Sequence[Video], batch_videos: int,
                        num_clips: int, device: torch.device, bf16: bool = False) -> np.ndarray:
    """Per video, the softmax over classes averaged over its test clips: ``[V, C]``."""
    was_training = model.training
    model.eval()
    out = []
    for chunk, clips in source.test_batches(videos, batch_videos):
        logits = run_on_clips(model, clips, device, bf16)
        out.append(F.softmax(logits, dim=1).view(len(chunk), num_clips, -1).mean(dim=1))
    model.train(was_training)
    return torch.cat(out).numpy()


def finetune(backbone: nn.Module, train_videos: Sequence[Video], test_videos: Sequence[Video], num_classes: int,
             source: ClipSource, cfg: FinetuneConfig, run: RunDir, device: torch.device) -> tuple[dict, np.ndarray]:
    """Train (or resume) and test; returns the summary (fractions) and the per-video test probabilities."""
    steps = steps_per_epoch(len(train_videos), cfg.batch_size)
    if steps == 0:
        raise ValueError(f"finetune.batch_size {cfg.batch_size} is larger than the {len(train_videos)} training videos")
    torch.manual_seed(cfg.seed)
    model = Classifier(backbone, num_classes, cfg.dropout).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    spec = LoopSpec(epochs=cfg.epochs, steps_per_epoch=steps, lr=cfg.lr, milestones=tuple(cfg.milestones),
                    max_steps=cfg.max_steps, checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                    log_every=cfg.log_every, bf16=cfg.bf16)

    def batches(epoch: int, skip: int):
        return source.train_batches(train_videos, cfg.batch_size, epoch, cfg.seed, skip)

    state = fit(model, optimizer, batches, spec, run, device, title="fine-tuning")
    probs = video_probabilities(model, source, test_videos, cfg.test_batch_videos, cfg.clips.num_clips, device, cfg.bf16)
    labels = np.array([v.label for v in test_videos])
    summary = {"top1": topk_accuracy(probs, labels, 1), "top5": topk_accuracy(probs, labels, 5),
               "epochs_done": state.epoch, "steps": state.step, "complete": state.epoch >= cfg.epochs}
    return summary, probs
