"""T-CoRe as the trainer drives it: state, one step, its checkpoint part, schedule and export.

``tools.train`` owns the loop, logging, checkpoint writing, resume and the process group and
calls these through ``METHODS["tcore"]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.checkpoint import export_teacher, teacher_state_dict
from model.masks import MaskMaker, host_masks
from model.optim import apply_schedules, build_adamw, param_groups
from model.schedules import Schedules, scaled_lr
from model.tcore import TCoReStudent, views_from_batch
from model.teacher import Teacher
from tools.distributed import Dist, autocast, grad_scaler, wrap_for_training

if TYPE_CHECKING:
    from tools.train import RunConfig


@dataclass
class TrainState:
    """Everything a step touches."""

    cfg: RunConfig
    dist: Dist
    student: TCoReStudent
    model: torch.nn.Module  # the student, DDP-wrapped and/or compiled
    teacher: Teacher
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sched: Schedules
    masks: MaskMaker
    step: int = 0

    @property
    def iters_per_epoch(self) -> int:
        return self.sched.iters_per_epoch


def build_state(cfg: RunConfig, d: Dist, iters_per_epoch: int) -> TrainState:
    """Student, teacher, optimizer, schedules; DDP and compile as configured."""
    tc, mc = cfg.train, cfg.model
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    student = TCoReStudent(mc).to(d.device)
    teacher = Teacher(student.backbone, student.dino_head, mc.head_n_prototypes, mc.centre_momentum, mc.centering)
    groups = param_groups(student.named_parameters(), len(student.backbone.blocks), tc.layerwise_decay,
                          tc.patch_embed_lr_mult, tc.pmm_lr_mult)
    opt = build_adamw(groups, fused=d.device.type == "cuda")
    model = wrap_for_training(student, d, tc.ddp_bucket_cap_mb, tc.compile, broadcast_buffers=False)
    if tc.compile:
        teacher.compile()  # in place: the networks' forward; state-dict keys unchanged
    total_batch = tc.batch_size_per_gpu * d.world
    sched = Schedules(
        total_iters=tc.epochs * iters_per_epoch, iters_per_epoch=iters_per_epoch,
        lr_peak=scaled_lr(tc.base_lr, total_batch), min_lr=tc.min_lr, warmup_epochs=tc.warmup_epochs,
        weight_decay=tc.weight_decay, weight_decay_end=tc.weight_decay_end, momentum_teacher=tc.momentum_teacher,
        final_momentum_teacher=tc.final_momentum_teacher, warmup_teacher_temp=tc.warmup_teacher_temp,
        teacher_temp=tc.teacher_temp, warmup_teacher_temp_epochs=tc.warmup_teacher_temp_epochs,
        freeze_last_layer_epochs=tc.freeze_last_layer_epochs)
    return TrainState(cfg, d, student, model, teacher, opt, grad_scaler(d, tc.precision), sched, mask_maker(cfg, d))


def mask_maker(cfg: RunConfig, d: Dist) -> MaskMaker:
    """The step's block masks, drawn on the host one step ahead from the step seed."""
    mc, tc = cfg.model, cfg.train
    make = functools.partial(host_masks, prob=mc.mask_sample_probability, ratio_min_max=mc.mask_ratio_min_max,
                             min_block=mc.mask_min_block, max_block_ratio=mc.mask_max_block_ratio,
                             aspect=mc.mask_block_aspect)
    return MaskMaker(make, lambda step: step_seed(tc.seed, d.rank, step) + 1, d.device)


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the per-step RNG streams (drop-path, masks): a pure function, so resume is exact."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def train_step(st: TrainState, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
    """One optimisation step; returns detached loss tensors (no host synchronisation here)."""
    tc, sv = st.cfg.train, st.sched.at(step)
    apply_schedules(st.opt, sv["lr"], sv["last_layer_lr"], sv["wd"], tc.released_lr_groups)
    torch.manual_seed(step_seed(tc.seed, st.dist.rank, step))
    dtype = None if st.dist.device.type == "cuda" and tc.precision != "fp32" else torch.float32
    views = views_from_batch(batch, dtype)
    p = st.student.backbone.patch_size
    grid = (views.current_global.shape[-2] // p, views.current_global.shape[-1] // p)
    with torch.profiler.record_function("masks"):  # built ahead on the host; here one copy
        mb = st.masks.get(step, views.current_global.shape[0], grid)
    with autocast(st.dist, st.cfg.train.precision):
        t_cls, t_patch, stats = st.teacher.targets(views.current_global, mb, views.n_global, sv["teacher_temp"])
        out = st.model(views, mb, t_cls, t_patch)
    st.opt.zero_grad(set_to_none=True)
    if st.scaler is not None:
        st.scaler.scale(out["loss"]).backward()
        st.scaler.unscale_(st.opt)
    else:
        out["loss"].backward()
    for module in (st.student.backbone, st.student.dino_head, st.student.pmm):
        torch.nn.utils.clip_grad_norm_(module.parameters(), tc.clip_grad, foreach=True)
    if st.scaler is not None:
        st.scaler.step(st.opt)
        st.scaler.update()
    else:
        st.opt.step()
    st.teacher.ema_update(st.student.backbone, st.student.dino_head, sv["momentum"])
    return {k: v.detach() for k, v in (out | stats).items()}


def tcore_checkpoint(st: TrainState) -> dict[str, Any]:
    """T-CoRe's part of a checkpoint: student, teacher, centres, optimizer, scaler."""
    return {
        "student": st.student.state_dict(),
        "teacher": teacher_state_dict(st.teacher.backbone, st.teacher.dino_head),
        "centres": {"cls": st.teacher.cls_centre.cpu(), "patch": st.teacher.patch_centre.cpu()},
        "optimizer": st.opt.state_dict(),
        "scaler": st.scaler.state_dict() if st.scaler is not None else None,
    }


def tcore_restore(st: TrainState, ckpt: dict[str, Any]) -> None:
    """T-CoRe's part of ``restore``."""
    st.student.load_state_dict(ckpt["student"])
    bb = {k[9:]: v for k, v in ckpt["teacher"].items() if k.startswith("backbone.")}
    hd = {k[10:]: v for k, v in ckpt["teacher"].items() if k.startswith("dino_head.")}
    st.teacher.backbone.load_state_dict(bb)
    st.teacher.dino_head.load_state_dict(hd)
    st.teacher.cls_centre.copy_(ckpt["centres"]["cls"])
    st.teacher.patch_centre.copy_(ckpt["centres"]["patch"])
    st.opt.load_state_dict(ckpt["optimizer"])
    if st.scaler is not None and ckpt.get("scaler"):
        st.scaler.load_state_dict(ckpt["scaler"])


def tcore_schedule(st: TrainState, step: int) -> dict[str, float]:
    """T-CoRe's logged schedule values at ``step``."""
    sv = st.sched.at(step)
    return {"lr": sv["lr"], "wd": sv["wd"], "momentum": sv["momentum"], "teacher_temp": sv["teacher_temp"]}


def tcore_export(st: TrainState, out: Path) -> Path:
    """``teacher.pth``: the teacher in the reference layout."""
    export_teacher(st.teacher.backbone, st.teacher.dino_head, out / "teacher.pth")
    return out / "teacher.pth"

