"""Process placement for training: device and backend, the process group, a checkpoint every rank agrees on.

Under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, one process per GPU, one or many
nodes) the group is NCCL on GPUs and gloo on CPUs; ``setup_distributed`` is the one place that
chooses (through ``model.device``: a GPU request never falls back to the CPU). Collectives give up after ``timeout`` instead of waiting forever on a dead or hung peer,
so a lost node ends the job (or lets ``torchrun --max-restarts`` restart it) in bounded time.

Checkpoints are written by rank 0 into ``output_dir``, which must be on a filesystem every node
shares. On resume rank 0 picks the newest readable one and every rank loads that same file.

Test-only fault injection: ``TCORE_FAULT_KILL_AT_STEP=S`` makes rank ``TCORE_FAULT_RANK``
(default 1) SIGKILL itself when it reaches step S, once per output directory (a marker file
``.fault_killed_step<S>_rank<R>`` there remembers it), so that a restarted job runs through.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.checkpoint import load_latest_checkpoint, read_checkpoint
from model.device import cuda_diagnosis, cuda_usable, resolve_device

FAULT_STEP_ENV = "TCORE_FAULT_KILL_AT_STEP"
FAULT_RANK_ENV = "TCORE_FAULT_RANK"


@dataclass
class Dist:
    """Process placement: the one place where the device and backend are chosen."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    def describe(self, request: str) -> str:
        """``8 x cuda``, or for the CPU the setting that chose it: ``2 x cpu (train.device=cpu)``."""
        if self.device.type == "cuda":
            return f"{self.world} x cuda"
        return f"{self.world} x cpu (train.device={request}" + (": no usable CUDA)" if request == "auto" else ")")


def setup_distributed(device: str = "auto", timeout_min: float = 10.0) -> Dist:
    """Resolve ``device`` (``auto | cuda | cpu``), then init the process group under torchrun:
    NCCL on CUDA, gloo on the CPU.

    A GPU request is a requirement: ``cuda``, or ``auto`` in a job of more than one process, raises
    ValueError (one line naming CUDA, the driver and the wheel's CUDA version) when CUDA cannot
    start, before anything is written or any peer is contacted; several CPU processes must say
    ``cpu``. ``auto`` with one process falls back to the CPU. The ordinal comes from the launcher
    (``LOCAL_RANK``, or the one GPU ``CUDA_VISIBLE_DEVICES`` leaves visible).
    ``timeout_min`` bounds every collective (and the NCCL watchdog): a peer that died or hangs
    makes the others fail after that long instead of blocking forever.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto" and world > 1 and not cuda_usable():
        raise ValueError(f"train.device=auto with {world} processes needs CUDA, which cannot start "
                         f"({cuda_diagnosis()}); to run them on the CPU say train.device=cpu")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        backend = "nccl"
    else:
        backend = "gloo"
        torch.set_flush_denormal(True)  # tiny EMA/LayerScale values otherwise hit slow denormal paths
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend, store=attempt_store(timeout), rank=rank, world_size=world,
                                timeout=timeout, device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev)


def attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """The ``env://`` rendezvous store, under a prefix unique to this ``torchrun`` restart attempt.

    After ``--max-restarts`` relaunches the workers they meet again in the launcher's store,
    which still holds the previous attempt's keys (the dead ranks' addresses); without a fresh
    prefix the new process group would try to connect to those and wait out the timeout.
    """
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"tcore_attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def load_agreed_checkpoint(ckpt_dir: Path, d: Dist, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Rank 0 picks the newest readable checkpoint in ``ckpt_dir``; every rank loads that same file.

    Raises ValueError on a rank that cannot read the file rank 0 chose (``output_dir`` not shared).
    """
    state = load_latest_checkpoint(ckpt_dir, log=log) if d.rank == 0 else None
    if d.world == 1:
        return state
    chosen = [state["path"] if state is not None else None]
    dist.broadcast_object_list(chosen, src=0, device=d.device)
    if d.rank == 0 or chosen[0] is None:
        return state
    try:
        state = read_checkpoint(chosen[0])
    except ValueError as exc:
        raise ValueError(f"rank {d.rank} cannot read the checkpoint rank 0 resumes from ({exc}); "
                         f"train.output_dir must be on a filesystem every node shares") from None
    state["path"] = chosen[0]
    return state


def fault_step() -> int | None:
    """The step of the test-only ``TCORE_FAULT_KILL_AT_STEP`` fault, or None when it is not set."""
    raw = os.environ.get(FAULT_STEP_ENV, "")
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"{FAULT_STEP_ENV}={raw!r}: expected a step number")
    return int(raw)


def kill_once_for_test(step: int, rank: int, out: Path) -> None:
    """SIGKILL this process at ``step`` on the fault rank, unless the marker in ``out`` says it happened."""
    if rank != int(os.environ.get(FAULT_RANK_ENV, "1")):
        return
    marker = out / f".fault_killed_step{step}_rank{rank}"
    if marker.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(marker, "w") as f:
        f.write(f"rank {rank} killed itself at step {step} ({FAULT_STEP_ENV})\n")
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def wrap_for_training(net: torch.nn.Module, d: Dist, bucket_cap_mb: float, compile_: bool,
                      broadcast_buffers: bool) -> torch.nn.Module:
    """``net`` under DDP when there are several ranks, then ``torch.compile`` when asked."""
    if d.world > 1:
        net = DistributedDataParallel(net, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                      bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=True,
                                      broadcast_buffers=broadcast_buffers)
    return torch.compile(net) if compile_ else net


def grad_scaler(d: Dist, precision: str) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler on the GPU; None otherwise (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda") if d.device.type == "cuda" and precision == "fp16" else None


def autocast(d: Dist, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the GPU; plain fp32 elsewhere."""
    if d.device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
