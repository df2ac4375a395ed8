"""Device choice: a GPU request is a requirement (one-line error naming CUDA, the driver and the
wheel's CUDA version), ``auto`` falls back to the CPU only for a one-process job, and the build's
kernel list decides which GPUs it runs on."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from model.device import arch_supported, cuda_diagnosis, cuda_usable, resolve_device
from tools.distributed import setup_distributed

CU13 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
no_cuda = pytest.mark.skipif(cuda_usable(), reason="checks the refusal on a machine where CUDA cannot start")


def test_kernel_lists_decide_supported_gpus():
    assert not arch_supported((7, 0), CU13)  # V100: dropped by CUDA 13 builds
    assert arch_supported((7, 5), CU13) and arch_supported((8, 9), CU13)  # L4/L40S run sm_86 cubins
    assert arch_supported((9, 0), ["sm_80", "sm_90a"])  # arch-specific names count
    assert arch_supported((12, 1), CU13)  # newer minor of the same major, plus PTX
    assert not arch_supported((8, 0), ["sm_86", "sm_90"])  # a cubin for a later minor does not run


def test_cpu_and_bad_names():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(ValueError, match="not one of auto, cpu, cuda"):
            resolve_device(bad)


@no_cuda
def test_cuda_request_names_cuda_driver_and_wheel():
    assert resolve_device("auto") == torch.device("cpu")  # one process: auto may fall back
    with pytest.raises(ValueError) as err:
        resolve_device("cuda:1")
    msg = str(err.value)
    assert "\n" not in msg and "CUDA cannot start" in msg and msg.endswith(cuda_diagnosis())
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda}" in msg and "driver" in msg


@no_cuda
def test_several_processes_without_cuda_must_ask_for_the_cpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="train.device=auto with 2 processes needs CUDA.*say train.device=cpu"):
        setup_distributed("auto")
    with pytest.raises(ValueError, match="CUDA cannot start"):
        setup_distributed("cuda")
    assert not dist.is_initialized()  # refused before any peer was contacted
