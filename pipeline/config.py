"""Configuration of the data pipeline (the ``pipeline:`` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class PipelineConfig:
    """What the loader reads and how it samples and augments triplets.

    The batch size is not here: the trainer passes ``train.batch_size_per_gpu``.
    """

    split: str = "train"
    read_mode: Literal["whole", "range"] = "whole"  # whole .mjpeg component, or 3 byte ranges
    sampling: Literal["sandwich", "gap"] = "sandwich"  # T-CoRe rule, or absolute gap in frames
    gap_min: int = 4
    gap_max: int = 48
    num_global: int = 2
    num_local: int = 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 1024
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.gap_min < 1 or self.gap_max < self.gap_min:
            raise ValueError(f"pipeline.gap_min/gap_max: need 1 <= gap_min <= gap_max, got {self.gap_min}, {self.gap_max}")
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError("pipeline.num_global must be >= 1 and pipeline.num_local >= 0")
        if self.global_size < 16 or self.local_size < 16:
            raise ValueError("pipeline.global_size and pipeline.local_size must be >= 16")
