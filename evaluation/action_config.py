"""Configuration of action-recognition evaluation (the run config of ``tools/eval_action``).

Defaults are the protocols of the papers' code (SEED_METHODS.md, "Shared evaluation"):
retrieval as DualVar's ``classifier.py --retrieval`` (10 uniform clips of 16 frames at stride 4,
centre crop, features averaged); the linear probe as CoCLR's ``eval/feature_linear_probe.py``
on those cached features with ``main_classifier.py --train_what last``'s head (L2 norm, BN,
linear); fine-tuning as DualVar's ``paper_scripts/*/finetune`` (``classifier.py --train_what ft``:
SGD lr 0.05, wd 1e-3, batch 16, 150 epochs, lr x0.1 at 50 and 100, 16 frames at stride 2,
128x171 -> random 112 crop, flip, colour jitter; test: 10 uniform clips, centre crop, softmax
averaged per video).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DATASETS = ("ucf101", "hmdb51")
PROTOCOLS = ("retrieval", "linear", "finetune")
TASKS = {f"{d}-{p}": (d, p) for d in DATASETS for p in PROTOCOLS}
CLIP_READERS = ("auto", "dali", "pil")  # evaluation.clip_source.make_clip_source


@dataclass
class ClipConfig:
    """How clips are cut from a video and shaped (one clip: [3, clip_len, crop, crop])."""

    clip_len: int = 16
    stride: int = 4  # step between a clip's frames, in stored frames (shard with FPS=0: the source rate)
    num_clips: int = 10  # uniformly spaced test clips per video (DualVar's UCF101_10CLIP placement)
    # (H, W) every frame is resized to, bicubic. DualVar's code hands (128, 171) to PIL, which
    # reads it as (W, H) and makes frames 171 high and 128 wide; the evident intent (VCOP's
    # torchvision Resize((128, 171)), the paper's "128x171") is 128 high: resize=[171,128] gives the code's.
    resize: tuple[int, int] = (128, 171)
    crop: int = 112
    flip: bool = True  # training clips: horizontal flip with p 0.5, one draw per clip
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8  # training clips: probability of the colour jitter (one draw per clip); 0 disables

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.clip_len < 1 or self.stride < 1 or self.num_clips < 1:
            raise ValueError("clips: clip_len, stride and num_clips must be >= 1")
        if self.crop < 8 or min(self.resize) < self.crop:
            raise ValueError(f"clips: crop {self.crop} must be >= 8 and fit inside resize {self.resize}")
        if not 0 <= self.jitter_p <= 1 or not 0 <= self.jitter[3] <= 0.5 or min(self.jitter) < 0:
            raise ValueError("clips: jitter_p in [0, 1], jitter values >= 0 and hue <= 0.5")


@dataclass
class FeatureConfig:
    """Clip features for retrieval and the linear probe: extracted once per checkpoint and cached."""

    clips: ClipConfig = field(default_factory=ClipConfig)
    batch_videos: int = 4  # videos per backbone batch (each contributes num_clips clips)
    cache_dir: str = "out/eval/action_features"  # "" disables the cache
    bf16: bool = False  # backbone under bfloat16 autocast (CUDA only)


@dataclass
class RetrievalConfig:
    """Nearest-neighbour retrieval: queries = test split, gallery = train split."""

    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    neighbours: int = 50  # neighbours per query written to neighbours.csv
    png_queries: int = 4  # queries drawn in neighbours.png with their top png_neighbours
    png_neighbours: int = 5


@dataclass
class ProbeConfig:
    """Linear probe on frozen, cached features (CoCLR feature_linear_probe.py defaults)."""

    normalize: bool = True  # L2-normalise the feature first (main_classifier --train_what last)
    bn: bool = True  # BatchNorm1d before the linear layer
    bn_affine: bool = True  # CoCLR's code: affine, initialised 1 / 0 and trained; false: a plain standardisation
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 1024
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)  # lr x 0.1 from each of these epochs on
    eval_every: int = 5  # test accuracy every N epochs (and after the last)
    seed: int = 0
    max_steps: int = 0  # stop after this many steps, checkpoint written (0: run all epochs)


@dataclass
class FinetuneConfig:
    """Backbone + linear classifier trained end to end on clips, tested with 10 clips per video."""

    clips: ClipConfig = field(default_factory=lambda: ClipConfig(stride=2))
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 16  # DualVar: 4 per GPU x 4 GPUs
    epochs: int = 150
    milestones: tuple[int, ...] = (50, 100)
    dropout: float = 0.0  # before the linear layer (DualVar's scripts use none)
    test_batch_videos: int = 4
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 2
    log_every: int = 1  # steps per metrics.jsonl record
    seed: int = 0
    max_steps: int = 0  # stop after this many steps, checkpoint written (0: run all epochs)
    bf16: bool = False  # bfloat16 autocast (CUDA only)


@dataclass
class ActionEvalConfig:
    """One action-recognition evaluation run."""

    task: str = "ucf101-retrieval"  # <ucf101|hmdb51>-<retrieval|linear|finetune>
    shards: str = ""  # shards made by `make shards DATA=ucf101|hmdb51`
    split: Literal[1, 2, 3] = 1  # official split (the papers report split 1)
    out: str = "out/eval/action"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    backbone: str = "auto"  # auto (from the checkpoint) | tcore_vit | a model/video3d.py arch (r3d18, tiny, ...)
    workers: int = 2  # JPEG decoding threads of the clip source
    clip_reader: Literal["auto", "dali", "pil"] = "auto"  # test clips: DALI graph (nvJPEG on a GPU) or PIL threads; auto: DALI on CUDA
    features: FeatureConfig = field(default_factory=FeatureConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.task not in TASKS:
            raise ValueError(f"task: '{self.task}' is not one of {', '.join(TASKS)}")
        if self.split not in (1, 2, 3):
            raise ValueError(f"split: official splits are 1, 2, 3, got {self.split}")
        if self.clip_reader not in CLIP_READERS:
            raise ValueError(f"clip_reader: '{self.clip_reader}' is not one of {', '.join(CLIP_READERS)}")
        if self.workers < 1 or self.features.batch_videos < 1 or self.finetune.test_batch_videos < 1:
            raise ValueError("workers, features.batch_videos and finetune.test_batch_videos must be >= 1")
        if any(k < 1 for k in self.retrieval.ks) or not self.retrieval.ks:
            raise ValueError(f"retrieval.ks: need positive ranks, got {self.retrieval.ks}")
        for name, c in (("probe", self.probe), ("finetune", self.finetune)):
            if c.lr <= 0 or c.batch_size < 1 or c.epochs < 1 or c.max_steps < 0:
                raise ValueError(f"{name}: lr > 0, batch_size >= 1, epochs >= 1, max_steps >= 0")
        if self.probe.eval_every < 1 or self.finetune.checkpoint_every < 0 or self.finetune.log_every < 1:
            raise ValueError("probe.eval_every >= 1, finetune.checkpoint_every >= 0, finetune.log_every >= 1")
        self.features.clips.validate()
        self.finetune.clips.validate()

    @property
    def dataset(self) -> str:
        return TASKS[self.task][0]

    @property
    def protocol(self) -> str:
        return TASKS[self.task][1]
