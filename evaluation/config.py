"""Configuration of label-propagation evaluation (the run config of ``tools/eval_propagation``).

``PropagationConfig`` is what the propagator receives; ``EvalConfig`` composes it with the
dataset/task choices. Defaults are the protocol of CropMAE / videowalk as T-CoRe uses it.
The device is chosen by ``model.device.resolve_device`` (a CUDA request that cannot be met is
an error naming the driver and the wheel's CUDA version, never a silent CPU run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from model.device import resolve_device  # the one device choice (auto | cpu | cuda | cuda:N)

Task = Literal["davis", "jhmdb", "vip"]


@dataclass
class PropagationConfig:
    """How labels travel from the first frame through the video.

    ``topk`` None means the task's protocol value (DAVIS and JHMDB 7, VIP 10).
    """

    context: int = 20  # previous frames in the short-term memory (first frame repeats to fill)
    long_memory: bool = True  # also attend to the first frame, without the radius limit
    radius: float = 20.0  # in patches; short-term keys farther than this are excluded
    temperature: float = 0.7  # affinity / temperature before the softmax over the top-k
    topk: int | None = None
    batch_size: int = 16  # frames per feature-extraction batch
    bf16: bool = False  # run the feature network under bfloat16 autocast (affinities stay fp32)
    query_chunk: int = 4096  # query patches per affinity block (bounds peak memory)

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.context < 1:
            raise ValueError(f"propagation.context: need >= 1, got {self.context}")
        if self.radius <= 0 or self.temperature <= 0:
            raise ValueError("propagation.radius and propagation.temperature must be > 0")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"propagation.topk: need >= 1, got {self.topk}")
        if self.batch_size < 1 or self.query_chunk < 1:
            raise ValueError("propagation.batch_size and propagation.query_chunk must be >= 1")


@dataclass(frozen=True)
class Protocol:
    """Per-benchmark input geometry and top-k, as the recipe states them."""

    topk: int
    size: tuple[int, int] | None = None  # fixed (H, W) network input
    long_side: int | None = None  # or: long side to this, short side floored to `multiple`
    multiple: int = 16


PROTOCOLS: dict[str, Protocol] = {
    "davis": Protocol(topk=7, size=(480, 880)),
    "jhmdb": Protocol(topk=7, size=(320, 320)),
    "vip": Protocol(topk=10, long_side=880, multiple=64),
}

# Reference numbers (percent) from the T-CoRe paper's table, for the summary printout.
REFERENCE: dict[str, dict[str, float]] = {
    "T-CoRe ViT-S/16, K400, 400 ep": {"J&F-Mean": 64.7, "mIoU": 37.8, "PCK@0.1": 47.0},
    "T-CoRe ViT-B/16, K400, 200 ep": {"J&F-Mean": 66.4, "mIoU": 38.9, "PCK@0.1": 47.1},
    "CropMAE ViT-S/16, K400": {"J&F-Mean": 58.6, "mIoU": 33.7, "PCK@0.1": 42.9},
}


@dataclass
class EvalConfig:
    """One evaluation run: which benchmark, where, and with what settings."""

    task: Task = "davis"
    root: str = ""
    out: str = "out/eval"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    davis_split: str = "val"  # ImageSets/2017/<split>.txt
    davis_resolution: str = "480p"
    jhmdb_split: str = "val_list.txt"  # file under ROOT listing the videos
    vip_split: str = "lists/val_videos.txt"  # file under ROOT listing the videos
    vip_classes: int = 20  # background + 19 parts
    joint_sigma: float = 0.5  # Gaussian of a joint's first-frame heat map, in patches
    pose_topk: int = 3  # predicted joint = weighted mean of its map's top-k pixels
    overlays_per_video: int = 3  # PNG overlays written per sequence
    input_size: tuple[int, int] | None = None  # (H, W) overriding the protocol's input geometry
    propagation: PropagationConfig = field(default_factory=PropagationConfig)

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.vip_classes < 2:
            raise ValueError(f"vip_classes: need >= 2, got {self.vip_classes}")
        if self.joint_sigma <= 0 or self.pose_topk < 1 or self.overlays_per_video < 0:
            raise ValueError("joint_sigma must be > 0, pose_topk >= 1, overlays_per_video >= 0")
        if self.input_size is not None and min(self.input_size) < 16:
            raise ValueError(f"input_size: need both sides >= 16, got {self.input_size}")
        resolve_device(self.device)


def input_size(task: str, height: int, width: int) -> tuple[int, int]:
    """Network input (H, W) for a frame of ``height`` x ``width`` under the task's protocol."""
    proto = PROTOCOLS[task]
    if proto.size is not None:
        return proto.size
    long_side = proto.long_side or max(height, width)
    scale = long_side / max(height, width)
    short = max(proto.multiple, int(min(height, width) * scale) // proto.multiple * proto.multiple)
    return (long_side, short) if height >= width else (short, long_side)
