"""The one choice of torch device for training, evaluation and profiling.

``resolve_device(request, local_rank)`` turns ``auto | cpu | cuda | cuda:N`` into a
``torch.device``. A CUDA request is a requirement: when CUDA cannot start (no driver, a driver
older than the wheel's CUDA, no visible GPU) it raises ``ValueError`` with one line that names
CUDA, the driver and the CUDA version the installed torch was built for; so does a GPU the build
has no kernels for (torch 2.14.1 from PyPI is a CUDA 13.0 build: NVIDIA driver >= 580, compute
capability >= 7.5). ``auto`` picks CUDA when it works and the CPU otherwise.

Device ordinal: ``cuda`` without an index takes the launcher's ``LOCAL_RANK`` when that many
GPUs are visible; when the launcher gives each process one GPU (``CUDA_VISIBLE_DEVICES`` with a
single id, as SLURM and some launchers do) it is ``cuda:0`` whatever ``LOCAL_RANK`` is.
"""

from __future__ import annotations

import ctypes
import os

import torch

DEVICES = ("auto", "cpu", "cuda")


# the oldest NVIDIA driver each CUDA major version runs on (Linux), for the error message
DRIVER_FLOOR = {"13": "580", "12": "525"}
NVIDIA_PROC = "/proc/driver/nvidia/version"


def driver_version() -> str:
    """The NVIDIA driver's version and CUDA version (``cuDriverGetVersion``), or why there is none."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    release = ""
    if os.path.isfile(NVIDIA_PROC):
        with open(NVIDIA_PROC) as f:
            words = f.readline().split()
        release = next((w for w in words if w[:1].isdigit() and "." in w), "")
    name = f"NVIDIA driver {release}" if release else "NVIDIA driver"
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return f"{name} present but cuDriverGetVersion failed"
    return f"{name} supports CUDA {v.value // 1000}.{(v.value % 1000) // 10}"


def cuda_diagnosis() -> str:
    """One line: what torch was built for (and the driver that needs) and what the machine offers."""
    built = torch.version.cuda
    if built:
        floor = DRIVER_FLOOR.get(built.split(".")[0])
        built = f"CUDA {built}" + (f" (needs NVIDIA driver >= {floor})" if floor else "")
    else:
        built = "no CUDA (a CPU-only build)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    vis = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"torch {torch.__version__} built for {built}; {driver_version()}{vis}"


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of ``capability`` runs a build with kernels for ``arch_list`` (``sm_XY``:
    the same major version at or below the GPU's minor; ``compute_XY``: PTX at or below it)."""
    cap = capability[0] * 10 + capability[1]

    def num(arch: str) -> int:
        return int(arch.split("_", 1)[1].rstrip("af"))

    cubins = [num(a) for a in arch_list if a.startswith("sm_")]
    ptx = [num(a) for a in arch_list if a.startswith("compute_")]
    return any(c // 10 == cap // 10 and c <= cap for c in cubins) or any(p <= cap for p in ptx)


def unsupported_gpu() -> str | None:
    """A line naming the first visible GPU this torch build has no kernels for, else None."""
    archs = torch.cuda.get_arch_list()
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        if archs and not arch_supported(cap, archs):
            return (f"CUDA: GPU {i} ({torch.cuda.get_device_name(i)}, compute capability {cap[0]}.{cap[1]}) has no "
                    f"kernels in torch {torch.__version__} (built for CUDA {torch.version.cuda}: "
                    f"{' '.join(archs)}); install the CUDA 12 stack (README, GPU section)")
    return None


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
        if not cuda_usable():
            return torch.device("cpu")
        name = "cuda"  # a GPU is there: from here on it is a requirement
    if not name.startswith("cuda"):
        raise ValueError(f"device: {request!r} is not one of auto, cpu, cuda, cuda:N")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {request!r} is not one of auto, cpu, cuda, cuda:N") from None
    if not cuda_usable():
        raise ValueError(f"device {request!r} requested but CUDA cannot start: {cuda_diagnosis()}")
    if (reason := unsupported_gpu()) is not None:
        raise ValueError(reason)
    index = dev.index if dev.index is not None else cuda_ordinal(local_rank)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {request!r}: only {torch.cuda.device_count()} GPUs visible ({cuda_diagnosis()})")
    return torch.device("cuda", index)
