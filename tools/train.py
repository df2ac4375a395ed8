"""Train T-CoRe on video shards: ``python -m tools.train --shards DIR --config PRESET [key=value ...]``.

Runs as one process (CPU or one GPU) or under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``), one process per GPU on one or more nodes, DDP over NCCL (GPU) or gloo (CPU). The
device is chosen in ``setup_distributed`` only (``tools/distributed.py``, ``train.device``): a GPU
request that cannot be met stops the run before anything is written. A restarted job (by hand
or by ``torchrun --max-restarts``) continues from the newest readable checkpoint, the same on every
rank. An "epoch" is ``train.iters_per_epoch`` iterations (the schedules' unit); the loader is
consumed as a stream of its own passes, position ``divmod(step, len(loader))``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model.checkpoint import (
    CheckpointWriteError,
    CheckpointWriter,
    export_teacher,
    teacher_state_dict,
)
from model.config import ModelConfig
from model.masks import MaskMaker, host_masks
from model.metrics import MetricsLogger
from model.optim import apply_schedules, build_adamw, param_groups
from model.schedules import Schedules, scaled_lr
from model.tcore import TCoReStudent, views_from_batch
from model.teacher import Teacher
from pipeline.config import PipelineConfig
from tools.config import config_to_dict, load_config, save_config
from tools.data_log import BadDataError, DataLog
from tools.distributed import (
    Dist,
    fault_step,
    kill_once_for_test,
    load_agreed_checkpoint,
    setup_distributed,
)


@dataclass
class TrainConfig:
    """Optimisation, schedules, run length, logging and checkpointing (reference names)."""

    device: Literal["auto", "cuda", "cpu"] = "auto"  # cuda is a requirement; auto = cuda if it works (one process)
    batch_size_per_gpu: int = 32
    epochs: int = 400
    iters_per_epoch: int = 1250  # iterations per schedule "epoch"; 0 = one pass of the loader
    max_steps: int = -1  # stop at this global step (-1 = epochs * iters_per_epoch; 0 = export the initial teacher)
    output_dir: str = "runs/tcore"
    base_lr: float = 0.002  # peak lr = base_lr * sqrt(total batch / 1024)
    min_lr: float = 1e-6
    warmup_epochs: float = 20
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    pmm_lr_mult: float = 0.1
    freeze_last_layer_epochs: float = 1
    # true = the T-CoRe code as released (March 2025; the published checkpoints): every non-PMM group
    # trains at the plain lr (no layer-wise decay, no patch-embedding x0.2, no prototype freeze);
    # false = the October 2025 fix, which applies them
    released_lr_groups: bool = False
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype on GPU; the CPU runs fp32
    compile: bool = False
    ddp_bucket_cap_mb: int = 25
    log_every: int = 10
    checkpoint_every_min: float = 30.0
    checkpoint_every_steps: int = 0  # 0 = only by time and at epoch ends
    keep_checkpoints: int = 3
    resume: bool = True  # continue from the newest readable checkpoint in output_dir/checkpoints
    dist_timeout_min: float = 10.0  # a collective waiting this long on a dead/hung peer fails the job
    seed: int = 0
    tensorboard: bool = True
    # stop once replaced bad samples exceed this fraction of the samples seen (tools/data_log.py)
    max_bad_fraction: float = 0.001
    log_keys: bool = False  # write OUT/keys.jsonl: every step's sample keys per rank

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.batch_size_per_gpu < 1 or self.epochs < 1 or self.iters_per_epoch < 0:
            raise ValueError("train.batch_size_per_gpu and train.epochs must be >= 1, train.iters_per_epoch >= 0")
        if self.max_steps < -1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("train.max_steps must be >= -1, train.log_every and train.keep_checkpoints >= 1")
        if not self.dist_timeout_min > 0:
            raise ValueError(f"train.dist_timeout_min: must be > 0 minutes, got {self.dist_timeout_min}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"train.max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class RunConfig:
    """A whole training run: the model, the data pipeline, the trainer."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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


def build_state(cfg: RunConfig, d: Dist, iters_per_epoch: int) -> TrainState:
    """Student, teacher, optimizer, schedules; DDP and compile as configured."""
    tc, mc = cfg.train, cfg.model
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    student = TCoReStudent(mc).to(d.device)
    teacher = Teacher(student.backbone, student.dino_head, mc.head_n_prototypes, mc.centre_momentum, mc.centering)
    groups = param_groups(student.named_parameters(), len(student.backbone.blocks), tc.layerwise_decay,
                          tc.patch_embed_lr_mult, tc.pmm_lr_mult)
    opt = build_adamw(groups, fused=d.device.type == "cuda")
    model: torch.nn.Module = student
    if d.world > 1:
        model = DDP(student, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                    bucket_cap_mb=tc.ddp_bucket_cap_mb, gradient_as_bucket_view=True, broadcast_buffers=False)
    if tc.compile:
        model = torch.compile(model)
        teacher.compile()  # in place: the networks' forward; state-dict keys unchanged
    total_batch = tc.batch_size_per_gpu * d.world
    sched = Schedules(
        total_iters=tc.epochs * iters_per_epoch, iters_per_epoch=iters_per_epoch,
        lr_peak=scaled_lr(tc.base_lr, total_batch), min_lr=tc.min_lr, warmup_epochs=tc.warmup_epochs,
        weight_decay=tc.weight_decay, weight_decay_end=tc.weight_decay_end, momentum_teacher=tc.momentum_teacher,
        final_momentum_teacher=tc.final_momentum_teacher, warmup_teacher_temp=tc.warmup_teacher_temp,
        teacher_temp=tc.teacher_temp, warmup_teacher_temp_epochs=tc.warmup_teacher_temp_epochs,
        freeze_last_layer_epochs=tc.freeze_last_layer_epochs)
    use_scaler = d.device.type == "cuda" and tc.precision == "fp16"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    return TrainState(cfg, d, student, model, teacher, opt, scaler, sched, mask_maker(cfg, d))


def mask_maker(cfg: RunConfig, d: Dist) -> MaskMaker:
    """The step's block masks, drawn on the host one step ahead from the step seed."""
    mc, tc = cfg.model, cfg.train
    make = functools.partial(host_masks, prob=mc.mask_sample_probability, ratio_min_max=mc.mask_ratio_min_max,
                             min_block=mc.mask_min_block, max_block_ratio=mc.mask_max_block_ratio,
                             aspect=mc.mask_block_aspect)
    return MaskMaker(make, lambda step: step_seed(tc.seed, d.rank, step) + 1, d.device)


def autocast(st: TrainState) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the GPU; plain fp32 elsewhere."""
    p = st.cfg.train.precision
    if st.dist.device.type != "cuda" or p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if p == "bf16" else torch.float16)


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
    with autocast(st):
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


def checkpoint_state(st: TrainState, batches_per_epoch: int) -> dict[str, Any]:
    """Everything needed to continue the run exactly."""
    return {
        "step": st.step,
        "student": st.student.state_dict(),
        "teacher": teacher_state_dict(st.teacher.backbone, st.teacher.dino_head),
        "centres": {"cls": st.teacher.cls_centre.cpu(), "patch": st.teacher.patch_centre.cpu()},
        "optimizer": st.opt.state_dict(),
        "scaler": st.scaler.state_dict() if st.scaler is not None else None,
        "loader": {"seed": st.cfg.pipeline.seed, "batches_per_epoch": batches_per_epoch,
                   "epoch": st.step // batches_per_epoch, "batch": st.step % batches_per_epoch},
        "world_size": st.dist.world,
        "config": config_to_dict(st.cfg),
    }


def restore(st: TrainState, ckpt: dict[str, Any], log) -> None:
    """Load a checkpoint written by ``checkpoint_state`` into ``st``."""
    if ckpt.get("world_size") != st.dist.world:
        log(f"note: checkpoint was written with {ckpt.get('world_size')} processes, now {st.dist.world}")
    pos = ckpt.get("loader", {})
    if pos.get("seed") != st.cfg.pipeline.seed:
        log(f"note: pipeline.seed is {st.cfg.pipeline.seed}, the checkpoint used {pos.get('seed')}: other data order")
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
    st.step = int(ckpt["step"])


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator on the GPU, process RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log_window(st: TrainState, acc: dict[str, torch.Tensor], n: int, elapsed: float, wait: float) -> dict:
    """Average the accumulated losses (the one host sync per log interval) into a record."""
    keys = sorted(acc)
    vals = (torch.stack([acc[k] for k in keys]) / n).tolist()
    sv = st.sched.at(st.step - 1)
    ipe = st.sched.iters_per_epoch
    rec: dict[str, Any] = {"step": st.step, "epoch": (st.step - 1) // ipe, **dict(zip(keys, vals))}
    rec |= {"lr": sv["lr"], "wd": sv["wd"], "momentum": sv["momentum"], "teacher_temp": sv["teacher_temp"],
            "samples_per_s": n * st.cfg.train.batch_size_per_gpu * st.dist.world / max(elapsed, 1e-9),
            "data_wait": wait / max(elapsed, 1e-9), "memory_gb": memory_gb(st.dist.device)}
    return rec


def save(st: TrainState, writer: CheckpointWriter | None, batches_per_epoch: int) -> None:
    """Rank 0 snapshots the state to host memory; the writer puts it on disk in the background
    (atomic, keeps the newest ``keep_checkpoints``). Other ranks go on at once."""
    if writer is not None:
        writer.save(checkpoint_state(st, batches_per_epoch), st.step)


def loop(st: TrainState, loader: Any, logger: MetricsLogger, out: Path, stop: int,
         writer: CheckpointWriter | None, data: DataLog) -> None:
    """Run steps ``st.step .. stop - 1``, logging every ``log_every`` and checkpointing as configured
    (``writer``: rank 0's, None elsewhere); ``data`` records bad samples and stops the run past
    ``train.max_bad_fraction`` (after a checkpoint)."""
    tc, nb, ipe = st.cfg.train, len(loader), st.sched.iters_per_epoch
    acc: dict[str, torch.Tensor] = {}
    n, wait, t0, last_ckpt, saved_at = 0, 0.0, time.perf_counter(), time.monotonic(), st.step
    kill_at = fault_step()
    if nb < 1:
        raise ValueError("the loader has no batches per pass (fewer samples per rank than the batch size)")
    st.model.train()
    while st.step < stop:
        it = iter(loader.iter_epoch(st.step // nb, st.step % nb))
        while st.step < stop:
            if st.step == kill_at:
                kill_once_for_test(st.step, st.dist.rank, out)
            t_wait = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            wait += time.perf_counter() - t_wait
            data.add(batch, st.step)
            terms = train_step(st, batch, st.step)
            acc = {k: acc.get(k, 0) + v for k, v in terms.items()}
            n += 1
            st.step += 1
            if st.step % tc.log_every == 0 or st.step == stop:
                logger.log(log_window(st, acc, n, time.perf_counter() - t0, wait) | data.window(logger.info))
                acc, n, wait, t0 = {}, 0, 0.0, time.perf_counter()
                too_many = data.over(st.step * tc.batch_size_per_gpu * st.dist.world)
                if too_many:
                    save(st, writer, nb)
                    raise BadDataError(too_many)
            due = (st.step % ipe == 0 or time.monotonic() - last_ckpt > 60 * tc.checkpoint_every_min
                   or (tc.checkpoint_every_steps and st.step % tc.checkpoint_every_steps == 0))
            if due:
                save(st, writer, nb)
                last_ckpt, saved_at = time.monotonic(), st.step
    if saved_at != st.step:
        save(st, writer, nb)


def build_run_loader(cfg: RunConfig, shards: str, d: Dist) -> Any:
    """The pipeline's triplet loader for this rank."""
    from pipeline.loader import build_loader

    return build_loader(cfg.pipeline, shards, batch_size=cfg.train.batch_size_per_gpu, device=str(d.device),
                        rank=d.rank, world_size=d.world)


class InputError(ValueError):
    """Bad input found while setting up (missing or broken shards): reported as one line, exit 2."""


def run(cfg: RunConfig, shards: str, loader: Any = None) -> dict[str, Any]:
    """Set up, resume if possible, train to the stop step, export the teacher. Returns a summary."""
    try:  # an unusable device or bad shards: one line, before anything is written
        d = setup_distributed(cfg.train.device, cfg.train.dist_timeout_min)
        loader = loader if loader is not None else build_run_loader(cfg, shards, d)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    out = Path(cfg.train.output_dir)
    logger = MetricsLogger(out, enabled=d.rank == 0, tensorboard=cfg.train.tensorboard)
    ipe = cfg.train.iters_per_epoch or len(loader)
    st = build_state(cfg, d, ipe)
    if d.rank == 0:
        save_config(cfg, out / "config.yaml")
    if cfg.train.resume:
        ckpt = load_agreed_checkpoint(out / "checkpoints", d, log=logger.info)
        if ckpt is not None:
            restore(st, ckpt, logger.info)
            logger.info(f"resumed from {ckpt['path']} at step {st.step}")
    total = cfg.train.epochs * ipe
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps >= 0 else total
    logger.info(f"training {cfg.model.arch} on {d.describe(cfg.train.device)}: steps {st.step} -> {stop} "
                f"({ipe} iterations per epoch, {len(loader)} batches per loader pass, "
                f"batch {cfg.train.batch_size_per_gpu} per process)")
    writer = CheckpointWriter(out / "checkpoints", cfg.train.keep_checkpoints) if d.rank == 0 else None
    data = DataLog(out, d.rank, d.world, cfg.train.max_bad_fraction,
                   len(loader) * cfg.train.batch_size_per_gpu * d.world, st.step, cfg.train.log_keys)
    try:
        loop(st, loader, logger, out, stop, writer, data)
    finally:
        logger.close()
        st.masks.close()
        if writer is not None:
            writer.close()  # the last checkpoint is on disk before the export (its error raised here)
    if d.rank == 0:
        export_teacher(st.teacher.backbone, st.teacher.dino_head, out / "teacher.pth")
        logger.info(f"teacher written to {out / 'teacher.pth'}")
    return write_summary(st, out)


def write_summary(st: TrainState, out: Path) -> dict[str, Any]:
    """Every rank's student-parameter checksum (equal when DDP kept the ranks in sync) -> summary.json."""
    local = torch.stack([p.detach().double().sum() for p in st.student.parameters()]).sum().view(1)
    sums = [torch.zeros_like(local) for _ in range(st.dist.world)]
    if st.dist.world > 1:
        dist.all_gather(sums, local)
    else:
        sums = [local]
    summary = {"step": st.step, "world_size": st.dist.world, "param_checksums": [float(x) for x in sums]}
    if st.dist.rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``--shards``, ``--config``, ``--out`` and free ``key.sub=value`` overrides."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="shards directory (with <split>/*.tar)")
    ap.add_argument("--config", default=None, help="YAML preset, e.g. configs/tcore_vits16_k400.yaml")
    ap.add_argument("--out", default=None, help="output directory (overrides train.output_dir)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"train.output_dir={args.out}"] if args.out else [])
    try:
        cfg = load_config(RunConfig, args.config, overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not Path(args.shards).is_dir():
        print(f"error: --shards {args.shards}: no such directory", file=sys.stderr)
        return 2
    try:
        run(cfg, args.shards)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointWriteError, BadDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
