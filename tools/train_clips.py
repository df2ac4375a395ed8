"""The clip methods (DualVar, CSTP, local-global) as the trainer drives them.

``tools.train`` owns the loop, logging, checkpoint writing, resume and the process group; this
module adapts a method module of ``model/`` (``build(cfg, device) -> MethodParts``,
``make_optimizer``, ``lr_at``, ``export_backbone``) to the trainer's five calls: ``build``,
``step``, ``schedule``, ``checkpoint`` / ``restore`` and ``export``. Per step: the EMA target's
outputs (CSTP) without gradient, the student's loss terms under autocast (bf16 on the GPU; the
losses are float32), one backward, the method's gradient clip, SGD at the method's learning
rate for this iteration (scaled with the total batch), then the target's EMA update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import model.cstp
import model.dualvar
import model.localglobal
from model.checkpoint import atomic_save
from model.contrastive import MethodParts
from tools.distributed import Dist, autocast, grad_scaler, wrap_for_training

MODULES: dict[str, ModuleType] = {"dualvar": model.dualvar, "cstp": model.cstp, "localglobal": model.localglobal}


@dataclass
class ClipState:
    """Everything a clip method's step touches."""

    method: str
    cfg: Any  # the RunConfig
    mcfg: Any  # the method's config (the run config's section of that name)
    dist: Dist
    parts: MethodParts
    model: torch.nn.Module  # the student, DDP-wrapped and/or compiled
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    iters_per_epoch: int
    total_iters: int
    step: int = 0

    @property
    def student(self) -> torch.nn.Module:
        return self.parts.student


def method_config(cfg: Any, method: str, d: Dist, log=print) -> Any:
    """The run's section for ``method``; SyncBN is turned off on the CPU (torch's SyncBatchNorm runs
    on GPUs only; CPU ranks keep their own BN statistics, their buffers broadcast from rank 0)."""
    mcfg = getattr(cfg, method)
    if getattr(mcfg, "sync_bn", False) and d.device.type != "cuda" and d.world > 1:
        log(f"note: {method}.sync_bn needs CUDA; plain BatchNorm on the CPU ranks")
        mcfg = dataclasses.replace(mcfg, sync_bn=False)
    return mcfg


def build(cfg: Any, method: str, d: Dist, iters_per_epoch: int, log=print) -> ClipState:
    """Student, target, SGD and schedule of ``method``; DDP and compile as configured."""
    tc = cfg.train
    mcfg = method_config(cfg, method, d, log)
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    parts = MODULES[method].build(mcfg, d.device)
    opt = MODULES[method].make_optimizer(mcfg, parts)
    # BN buffers broadcast from rank 0 (DDP's default), as the CPU ranks keep plain BatchNorm
    net = wrap_for_training(parts.student, d, tc.ddp_bucket_cap_mb, tc.compile, broadcast_buffers=True)
    return ClipState(method, cfg, mcfg, d, parts, net, opt, grad_scaler(d, tc.precision), iters_per_epoch,
                     mcfg.epochs * iters_per_epoch)


def lr(st: ClipState, it: int) -> float:
    """The method's learning rate at iteration ``it`` for the run's total batch."""
    total_batch = st.cfg.train.batch_size_per_gpu * st.dist.world
    return MODULES[st.method].lr_at(st.mcfg, it, st.iters_per_epoch, total_batch)


def step(st: ClipState, batch: dict[str, Any], it: int) -> dict[str, torch.Tensor]:
    """One optimisation step; returns detached loss terms (no host synchronisation)."""
    rate = lr(st, it)
    for g in st.opt.param_groups:
        g["lr"] = rate * g.get("lr_mult", 1.0)
    teacher = st.parts.teacher
    with autocast(st.dist, st.cfg.train.precision):
        t_out = teacher(batch) if teacher is not None else None
        out = st.model(batch, t_out)
    st.opt.zero_grad(set_to_none=True)
    if st.scaler is not None:
        st.scaler.scale(out["loss"]).backward()
        st.scaler.unscale_(st.opt)
    else:
        out["loss"].backward()
    if st.mcfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(st.student.parameters(), st.mcfg.grad_clip, foreach=True)
    if st.scaler is not None:
        st.scaler.step(st.opt)
        st.scaler.update()
    else:
        st.opt.step()
    if teacher is not None:
        teacher.update(st.student, it, st.total_iters)
    return {k: v.detach() for k, v in out.items()}


def schedule(st: ClipState, it: int) -> dict[str, float]:
    """What the log records besides the losses: the learning rate, and the target's momentum."""
    rec = {"lr": lr(st, it)}
    if st.parts.teacher is not None:
        rec["momentum"] = st.parts.teacher.momentum_at(it, st.total_iters)
    return rec


def checkpoint(st: ClipState) -> dict[str, Any]:
    """The method's part of a checkpoint (the trainer adds step, loader position and config)."""
    return {"method": st.method, "student": st.student.state_dict(),
            "teacher": st.parts.teacher.state_dict() if st.parts.teacher is not None else None,
            "optimizer": st.opt.state_dict(), "scaler": st.scaler.state_dict() if st.scaler is not None else None}


def restore(st: ClipState, ckpt: dict[str, Any]) -> None:
    """Load what ``checkpoint`` wrote; ValueError if it is another method's."""
    if ckpt.get("method", "tcore") != st.method:
        raise ValueError(f"checkpoint {ckpt.get('path')}: written by method '{ckpt.get('method', 'tcore')}', "
                         f"this run is '{st.method}' (use another train.output_dir)")
    st.student.load_state_dict(ckpt["student"])
    if st.parts.teacher is not None:
        st.parts.teacher.load_state_dict(ckpt["teacher"])
    st.opt.load_state_dict(ckpt["optimizer"])
    if st.scaler is not None and ckpt.get("scaler"):
        st.scaler.load_state_dict(ckpt["scaler"])


def export(st: ClipState, out: Path) -> Path:
    """``backbone.pth``: ``{"backbone": state_dict, "arch", "method"}`` (``model/video3d.py``)."""
    path = out / "backbone.pth"
    atomic_save(MODULES[st.method].export_backbone(st.student), path)
    return path
