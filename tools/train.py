"""Train on video shards: ``python -m tools.train --shards DIR --config PRESET [key=value ...]``.

The run config's ``method`` picks what is trained from ``METHODS``: ``tcore``
(``tools/train_tcore.py``) or a clip method, ``dualvar``, ``cstp``, ``localglobal``
(``tools/train_clips.py`` over ``model/<method>.py``, configured by the run config's section of
that name; ``pipeline.workload`` must be the same name). The loop, logging, checkpoints, resume and
DDP below are the same for every method.

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
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from model.checkpoint import CheckpointWriteError, CheckpointWriter
from model.config import ModelConfig
from model.cstp import CSTPConfig
from model.dualvar import DualVarConfig
from model.localglobal import LocalGlobalConfig
from model.metrics import MetricsLogger
from pipeline.config import PipelineConfig
from pipeline.integrity import ReaderError
from tools import train_clips
from tools.config import config_to_dict, load_config, save_config
from tools.data_log import BadDataError, DataLog
from tools.distributed import (
    Dist,
    fault_step,
    kill_once_for_test,
    load_agreed_checkpoint,
    setup_distributed,
)
from tools.train_tcore import (  # noqa: F401  (TrainState, step_seed: part of this module's interface)
    TrainState,
    build_state,
    step_seed,
    tcore_checkpoint,
    tcore_export,
    tcore_restore,
    tcore_schedule,
    train_step,
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


CLIP_METHODS = ("dualvar", "cstp", "localglobal")


@dataclass
class RunConfig:
    """A whole training run: the method, its model, the data pipeline, the trainer.

    ``model`` is T-CoRe's; a clip method reads only its own section (``dualvar``, ``cstp`` or
    ``localglobal``: heads, losses, optimiser, schedule and its ``epochs``, the run length).
    """

    method: str = "tcore"  # tcore | dualvar | cstp | localglobal (a key of METHODS)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dualvar: DualVarConfig = field(default_factory=DualVarConfig)
    cstp: CSTPConfig = field(default_factory=CSTPConfig)
    localglobal: LocalGlobalConfig = field(default_factory=LocalGlobalConfig)

    def validate(self) -> None:
        """Raise ValueError when the method and the pipeline's workload do not fit together."""
        if self.method not in ("tcore", *CLIP_METHODS):
            raise ValueError(f"method must be one of tcore, {', '.join(CLIP_METHODS)}; got {self.method!r}")
        clip = self.method in CLIP_METHODS
        if clip and self.pipeline.workload != self.method:
            raise ValueError(f"method {self.method} needs pipeline.workload={self.method} "
                             f"(got {self.pipeline.workload})")
        if not clip and self.pipeline.workload not in ("tcore", "simple"):
            raise ValueError(f"pipeline.workload={self.pipeline.workload} needs method={self.pipeline.workload}")
        if self.method == "localglobal" and self.localglobal.num_local != self.pipeline.localglobal.num_local:
            raise ValueError(f"localglobal.num_local ({self.localglobal.num_local}) must equal "
                             f"pipeline.localglobal.num_local ({self.pipeline.localglobal.num_local})")
        if self.method == "dualvar" and self.dualvar.segments != self.pipeline.dualvar.segments:
            raise ValueError(f"dualvar.segments ({self.dualvar.segments}) must equal "
                             f"pipeline.dualvar.segments ({self.pipeline.dualvar.segments})")

    def run_epochs(self) -> int:
        """Schedule epochs of the run: ``train.epochs`` (T-CoRe) or the clip method's ``epochs``."""
        return getattr(self, self.method).epochs if self.method in CLIP_METHODS else self.train.epochs


def checkpoint_state(st: Any, batches_per_epoch: int) -> dict[str, Any]:
    """Everything needed to continue the run exactly (the method's part from ``METHODS``)."""
    return {
        "step": st.step,
        "method": st.cfg.method,
        **METHODS[st.cfg.method].checkpoint(st),
        "loader": {"seed": st.cfg.pipeline.seed, "batches_per_epoch": batches_per_epoch,
                   "epoch": st.step // batches_per_epoch, "batch": st.step % batches_per_epoch},
        "world_size": st.dist.world,
        "config": config_to_dict(st.cfg),
    }


def restore(st: Any, ckpt: dict[str, Any], log) -> None:
    """Load a checkpoint written by ``checkpoint_state`` into ``st``; ValueError for another method's."""
    if ckpt.get("method", "tcore") != st.cfg.method:
        raise ValueError(f"checkpoint {ckpt.get('path')}: written by method '{ckpt.get('method', 'tcore')}', "
                         f"this run is '{st.cfg.method}' (use another train.output_dir)")
    if ckpt.get("world_size") != st.dist.world:
        log(f"note: checkpoint was written with {ckpt.get('world_size')} processes, now {st.dist.world}")
    pos = ckpt.get("loader", {})
    if pos.get("seed") != st.cfg.pipeline.seed:
        log(f"note: pipeline.seed is {st.cfg.pipeline.seed}, the checkpoint used {pos.get('seed')}: other data order")
    METHODS[st.cfg.method].restore(st, ckpt)
    st.step = int(ckpt["step"])


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator on the GPU, process RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log_window(st: Any, acc: dict[str, torch.Tensor], n: int, elapsed: float, wait: float) -> dict:
    """Average the accumulated losses (the one host sync per log interval) into a record."""
    keys = sorted(acc)
    vals = (torch.stack([acc[k] for k in keys]) / n).tolist()
    rec: dict[str, Any] = {"step": st.step, "epoch": (st.step - 1) // st.iters_per_epoch, **dict(zip(keys, vals))}
    rec |= METHODS[st.cfg.method].schedule(st, st.step - 1)
    rec |= {"samples_per_s": n * st.cfg.train.batch_size_per_gpu * st.dist.world / max(elapsed, 1e-9),
            "data_wait": wait / max(elapsed, 1e-9), "memory_gb": memory_gb(st.dist.device)}
    return rec


def save(st: Any, writer: CheckpointWriter | None, batches_per_epoch: int) -> None:
    """Rank 0 snapshots the state to host memory; the writer puts it on disk in the background
    (atomic, keeps the newest ``keep_checkpoints``). Other ranks go on at once."""
    if writer is not None:
        writer.save(checkpoint_state(st, batches_per_epoch), st.step)


def loop(st: Any, loader: Any, logger: MetricsLogger, out: Path, stop: int,
         writer: CheckpointWriter | None, data: DataLog) -> None:
    """Run steps ``st.step .. stop - 1``, logging every ``log_every`` and checkpointing as configured
    (``writer``: rank 0's, None elsewhere); ``data`` records bad samples and stops the run past
    ``train.max_bad_fraction`` (after a checkpoint)."""
    tc, nb, ipe = st.cfg.train, len(loader), st.iters_per_epoch
    step_fn = METHODS[st.cfg.method].step
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
            terms = step_fn(st, batch, st.step)
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


@dataclass(frozen=True)
class Method:
    """What the loop calls for one method; each gets its state from ``build`` and hands it back."""

    build: Any  # (cfg, dist, iters_per_epoch, log) -> state with .cfg, .dist, .model, .student, .step
    step: Any  # (state, batch, step) -> {"loss": ..., "loss_<term>": ..., ...} detached
    schedule: Any  # (state, step) -> logged schedule values
    checkpoint: Any  # state -> the method's part of a checkpoint
    restore: Any  # (state, checkpoint) -> None
    export: Any  # (state, output dir) -> path of the exported weights
    close: Any  # state -> None


def _clip_method(name: str) -> Method:
    return Method(build=lambda cfg, d, ipe, log: train_clips.build(cfg, name, d, ipe, log), step=train_clips.step,
                  schedule=train_clips.schedule, checkpoint=train_clips.checkpoint, restore=train_clips.restore,
                  export=train_clips.export, close=lambda st: None)


METHODS: dict[str, Method] = {
    "tcore": Method(build=lambda cfg, d, ipe, log: build_state(cfg, d, ipe), step=train_step,
                    schedule=tcore_schedule, checkpoint=tcore_checkpoint, restore=tcore_restore,
                    export=tcore_export, close=lambda st: st.masks.close()),
    "dualvar": _clip_method("dualvar"),
    "cstp": _clip_method("cstp"),
    "localglobal": _clip_method("localglobal"),
}


def run(cfg: RunConfig, shards: str, loader: Any = None) -> dict[str, Any]:
    """Set up, resume if possible, train to the stop step, export the weights. Returns a summary."""
    try:  # an unusable device or bad shards: one line, before anything is written
        d = setup_distributed(cfg.train.device, cfg.train.dist_timeout_min)
        loader = loader if loader is not None else build_run_loader(cfg, shards, d)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    out = Path(cfg.train.output_dir)
    logger = MetricsLogger(out, enabled=d.rank == 0, tensorboard=cfg.train.tensorboard)
    ipe = cfg.train.iters_per_epoch or len(loader)
    method = METHODS[cfg.method]
    st = method.build(cfg, d, ipe, logger.info)
    if d.rank == 0:
        save_config(cfg, out / "config.yaml")
    if cfg.train.resume:
        ckpt = load_agreed_checkpoint(out / "checkpoints", d, log=logger.info)
        if ckpt is not None:
            try:
                restore(st, ckpt, logger.info)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            logger.info(f"resumed from {ckpt['path']} at step {st.step}")
    total = cfg.run_epochs() * ipe
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps >= 0 else total
    arch = cfg.model.arch if cfg.method == "tcore" else f"{cfg.method} {getattr(cfg, cfg.method).arch}"
    logger.info(f"training {arch} on {d.describe(cfg.train.device)}: steps {st.step} -> {stop} "
                f"({ipe} iterations per epoch, {len(loader)} batches per loader pass, "
                f"batch {cfg.train.batch_size_per_gpu} per process)")
    writer = CheckpointWriter(out / "checkpoints", cfg.train.keep_checkpoints) if d.rank == 0 else None
    data = DataLog(out, d.rank, d.world, cfg.train.max_bad_fraction,
                   len(loader) * cfg.train.batch_size_per_gpu * d.world, st.step, cfg.train.log_keys)
    try:
        loop(st, loader, logger, out, stop, writer, data)
    finally:
        logger.close()
        method.close(st)
        if writer is not None:
            writer.close()  # the last checkpoint is on disk before the export (its error raised here)
    if d.rank == 0:
        path = method.export(st, out)
        logger.info(f"{'teacher' if cfg.method == 'tcore' else 'backbone'} written to {path}")
    return write_summary(st, out)


def write_summary(st: Any, out: Path) -> dict[str, Any]:
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
    except (CheckpointWriteError, BadDataError, ReaderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
