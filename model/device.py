"""The one choice of torch device for training, evaluation and profiling.

``resolve_device(request, local_rank)`` turns ``auto | cpu | cuda | cuda:N`` into a
``torch.device``. A CUDA request is a requirement: when CUDA cannot start (no driver, a driver
older than the wheel's CUDA, no visible GPU) it raises ``ValueError`` with one line that names
CUDA, the driver and the CUDA version the installed torch was built for. ``auto`` picks CUDA
when it works and the CPU otherwise, and says which.

Device ordinal: ``cuda`` without an index takes the launcher's ``LOCAL_RANK`` when that many
GPUs are visible; when the launcher gives each process one GPU (``CUDA_VISIBLE_DEVICES`` with a
single id, as SLURM and some launchers do) it is ``cuda:0`` whatever ``LOCAL_RANK`` is.
"""

from __future__ import annotations

import ctypes
import os

import torch

DEVICES = ("auto", "cpu", "cuda")


def driver_version() -> str:
    """The NVIDIA driver's CUDA version (``cuDriverGetVersion``), or why there is none."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return "NVIDIA driver present but cuDriverGetVersion failed"
    return f"driver supports CUDA {v.value // 1000}.{(v.value % 1000) // 10}"


def cuda_diagnosis() -> str:
    """One line: what torch was built for and what the machine offers."""
    built = torch.version.cuda or "no CUDA (a CPU-only build)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    vis = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"torch {torch.__version__} built for CUDA {built}; {driver_version()}{vis}"


def cuda_usable() -> bool:
    """True when torch can start CUDA and sees at least one GPU."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def cuda_ordinal(local_rank: int | None) -> int:
    """The GPU of this process: ``LOCAL_RANK`` among the visible GPUs, or 0 when only one is visible."""
    n = torch.cuda.device_count()
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    if rank < n:
        return rank
    if n == 1:
        return 0
    raise ValueError(f"CUDA: local rank {rank} but only {n} GPUs are visible to this process "
                     f"({cuda_diagnosis()}); start at most {n} processes per node")


def resolve_device(request: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` -> a device; ValueError (one line) when CUDA is asked for and unusable."""
    name = str(request).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda", cuda_ordinal(local_rank)) if cuda_usable() else torch.device("cpu")
    if not name.startswith("cuda"):
        raise ValueError(f"device: {request!r} is not one of auto, cpu, cuda, cuda:N")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {request!r} is not one of auto, cpu, cuda, cuda:N") from None
    if not cuda_usable():
        raise ValueError(f"device {request!r} requested but CUDA cannot start: {cuda_diagnosis()}")
    index = dev.index if dev.index is not None else cuda_ordinal(local_rank)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {request!r}: only {torch.cuda.device_count()} GPUs visible ({cuda_diagnosis()})")
    return torch.device("cuda", index)
