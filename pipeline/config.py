"""Configuration of the data pipeline (the ``pipeline:`` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.clips import CSTPSampling, DualVarSampling, LocalGlobalSampling

WORKLOADS = ("tcore", "simple", "dualvar", "cstp", "localglobal")


@dataclass
class PipelineConfig:
    """What the loader reads and how it samples and augments triplets.

    The batch size is not here: the trainer passes ``train.batch_size_per_gpu``.
    The device is not here either: ``build_loader(device=...)`` decides it.
    """

    split: str = "train"
    read_mode: Literal["whole", "range"] = "whole"  # whole .mjpeg component, or 3 byte ranges
    sampling: Literal["sandwich", "gap"] = "sandwich"  # T-CoRe rule, or absolute gap in frames
    gap_min: int = 4
    gap_max: int = 48
    # full T-CoRe views, one crop per frame, or the clips of a clip method (pipeline/clip_plan.py)
    workload: Literal["tcore", "simple", "dualvar", "cstp", "localglobal"] = "tcore"
    num_global: int = 2
    num_local: int = 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # interpolation: the reference code resizes every crop bicubic (the paper names bicubic for the
    # global crops only); linear costs DALI's CPU resampler ~40 % less (the CPU presets use it)
    global_interp: Literal["cubic", "linear"] = "cubic"  # current frame's global crops
    context_interp: Literal["cubic", "linear"] = "cubic"  # past/future centred crops
    local_interp: Literal["cubic", "linear"] = "cubic"  # local crops
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8  # colour jitter: brightness, contrast, saturation, hue
    jitter_order: Literal["random", "fixed"] = "random"  # random per view (torchvision), or b, c, s, h
    contrast_pivot: Literal["mean", "mid"] = "mean"  # the view's mean grey (torchvision), or 128
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # fraction of the colour circle, as in torchvision
    grayscale_p: float = 0.2
    # blur probability of global view 1 (and the first past/future views), global views 2.. (and
    # the second ones), local views. (0.0, 0.9, 0.5) is what the reference code does (DINOv2's
    # GaussianBlur applies blur with probability 1 - p); the paper's words are (1.0, 0.1, 0.5)
    blur_p: tuple[float, float, float] = (0.0, 0.9, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 9  # taps: 9 = torchvision GaussianBlur(9) as the reference code; 0 = |k| <= ceil(3 sigma)
    solarize_p: float = 0.2  # global view 2 only
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 1024
    range_workers: int = 2  # processes reading byte ranges in read_mode=range
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder
    use_mmap: bool = False  # reader maps tars instead of read(); read() keeps I/O accounting honest
    verify_offsets: bool = True  # read every sample's offsets table at loader start
    # range mode: check each fetched frame (auto: CRC-32 on v2 sets, a reader-side decode on v1
    # sets; decode: both; none: nothing) and replace bad samples (pipeline.integrity)
    frame_check: Literal["auto", "decode", "none"] = "auto"
    raw_size: int = 0  # debug: also output the 3 frames' top-left raw_size² pixels, un-augmented
    repeat: int = 1  # passes over the split per loader epoch (>1 lengthens epochs of tiny splits)
    seed: int = 0
    # clip workloads: the sampling rules of pipeline/clips.py (only the chosen workload's is used)
    # and the clips' look; colour jitter, grey, blur sigma/kernel, mean and std are the keys above
    dualvar: DualVarSampling = field(default_factory=DualVarSampling)
    cstp: CSTPSampling = field(default_factory=CSTPSampling)
    localglobal: LocalGlobalSampling = field(default_factory=LocalGlobalSampling)
    clip_size: int = 112  # side of every delivered clip (localglobal: the global clip)
    local_clip_size: int = 112  # localglobal's local clips
    clip_interp: Literal["cubic", "linear"] = "linear"
    clip_blur_p: float = 0.5  # per clip, among the clips that get colour augmentation
    clip_tilt: float = 10.0  # cstp's strong augmentation: rotation U(-tilt, tilt) degrees on top of the quarter turns

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.gap_min < 1 or self.gap_max < self.gap_min:
            raise ValueError(f"pipeline.gap_min/gap_max: need 1 <= gap_min <= gap_max, got {self.gap_min}, {self.gap_max}")
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError("pipeline.num_global must be >= 1 and pipeline.num_local >= 0")
        if self.global_size < 16 or self.local_size < 16:
            raise ValueError("pipeline.global_size and pipeline.local_size must be >= 16")
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"pipeline.{name}: need 0 < low <= high, got {lo}, {hi}")
        for name in ("jitter_p", "grayscale_p", "solarize_p", "hw_decoder_load"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pipeline.{name}: must be in [0, 1], got {getattr(self, name)}")
        if any(not 0.0 <= p <= 1.0 for p in self.blur_p):
            raise ValueError(f"pipeline.blur_p: every probability must be in [0, 1], got {self.blur_p}")
        if self.num_threads < 1 or self.prefetch < 1 or self.shuffle_buffer < 1 or self.range_workers < 1:
            raise ValueError("pipeline.num_threads, prefetch, shuffle_buffer and range_workers must be >= 1")
        if self.repeat < 1:
            raise ValueError(f"pipeline.repeat must be >= 1, got {self.repeat}")
        for name in ("global_interp", "context_interp", "local_interp"):
            if getattr(self, name) not in ("cubic", "linear"):
                raise ValueError(f"pipeline.{name} must be 'cubic' or 'linear', got {getattr(self, name)!r}")
        if self.blur_kernel != 0 and (self.blur_kernel < 3 or self.blur_kernel % 2 == 0):
            raise ValueError(f"pipeline.blur_kernel must be 0 or an odd number >= 3, got {self.blur_kernel}")
        for name, allowed in (("jitter_order", ("random", "fixed")), ("contrast_pivot", ("mean", "mid")),
                              ("read_mode", ("whole", "range")), ("workload", WORKLOADS),
                              ("clip_interp", ("cubic", "linear")), ("frame_check", ("auto", "decode", "none"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"pipeline.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.clip_size < 8 or self.local_clip_size < 8 or not 0.0 <= self.clip_blur_p <= 1.0:
            raise ValueError("pipeline.clip_size and local_clip_size must be >= 8, clip_blur_p in [0, 1]")
        if self.workload == "dualvar" and self.dualvar.frames % self.dualvar.segments:
            raise ValueError(f"pipeline.dualvar.frames ({self.dualvar.frames}) must split into "
                             f"{self.dualvar.segments} equal segments")
        if self.raw_size < 0:
            raise ValueError(f"pipeline.raw_size must be >= 0, got {self.raw_size}")
