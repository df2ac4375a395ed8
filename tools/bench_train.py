"""Training throughput with the real pipeline vs the same model fed one fixed in-memory batch.

``python -m tools.bench_train --shards DIR --config PRESET [--steps N] [--windows R] [--json F] [key=value ...]``

One model is fed by both sources in alternating timed windows of ``--steps`` steps (after
``--warmup`` untimed steps each; device synchronised at window edges only); medians are
printed. ``pipeline / fixed`` is the share of the data-free speed that the real loader keeps;
``1 - ratio`` is the share of training time lost to data. Also per source: ``data_wait`` (the
share of a window spent waiting for the next batch), peak memory, and model FLOP utilisation:
FLOPs of one step counted with ``torch.utils.flop_counter`` (student forward and backward, teacher
forward), times steps/s, over the GPU's dense bf16 peak (``PEAK_TFLOPS``, or ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.checkpoint import export_teacher
from tools.config import load_config
from tools.train import (
    RunConfig,
    TrainState,
    build_run_loader,
    build_state,
    memory_gb,
    setup_distributed,
    train_step,
)

# dense bf16 tensor-core peak, TFLOP/s, by a piece of the device name (first match wins)
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


class FixedBatchLoader:
    """The loader interface (``len``, ``iter_epoch``) serving one batch over and over."""

    def __init__(self, batch: dict[str, Any], batches_per_epoch: int) -> None:
        self.batch = batch
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def iter_epoch(self, epoch: int, start_batch: int = 0):
        """Yield the same batch ``len - start_batch`` times."""
        for _ in range(start_batch, self.batches_per_epoch):
            yield self.batch


def synthetic_batch(batch_size: int, n_local: int, global_size: int, local_size: int,
                    device: str | torch.device = "cpu", seed: int = 0) -> dict[str, Any]:
    """A random batch with the loader's keys and shapes (for tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)

    def img(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    b = batch_size
    return {
        "current_global": img(b, 2, 3, global_size, global_size),
        "current_local": img(b, n_local, 3, local_size, local_size),
        "past": img(b, 2, 3, global_size, global_size),
        "future": img(b, 2, 3, global_size, global_size),
        "frame_idx": torch.zeros(b, 3, dtype=torch.long, device=device),
        "num_frames": torch.full((b,), 20, dtype=torch.long, device=device),
        "label": torch.zeros(b, dtype=torch.long, device=device),
        "key": [f"synthetic{i}" for i in range(b)],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stream(loader: Any):
    epoch = 0
    while True:
        yield from loader.iter_epoch(epoch)
        epoch += 1


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from ``PEAK_TFLOPS``, None when unknown (or a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_TFLOPS if key in name), None)


def step_flops(st: TrainState, batch: dict[str, Any]) -> int:
    """Model FLOPs of one training step (runs one step under the FLOP counter)."""
    with FlopCounterMode(display=False) as counter:
        train_step(st, batch, st.step)
    st.step += 1
    return int(counter.get_total_flops())


def time_interleaved(st: TrainState, streams: dict[str, Any], warmup: int, steps: int, windows: int,
                     settle: int) -> dict[str, dict[str, list[float]]]:
    """Per stream and timed window: steps/s, the share of time spent waiting for a batch, and peak
    memory (GB). Streams alternate window by window (so drift in machine load hits both alike);
    ``settle`` untimed steps before each window drain what a loader prefetched meanwhile."""
    device = st.dist.device
    for it in streams.values():
        for _ in range(warmup):
            train_step(st, next(it), st.step)
            st.step += 1
    res: dict[str, dict[str, list[float]]] = {n: {"rate": [], "wait": [], "memory_gb": []} for n in streams}
    for _ in range(windows):
        for name, it in streams.items():
            for _ in range(settle):
                train_step(st, next(it), st.step)
                st.step += 1
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            wait, t0 = 0.0, time.perf_counter()
            for _ in range(steps):
                tw = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - tw
                train_step(st, batch, st.step)
                st.step += 1
            _sync(device)
            dt = time.perf_counter() - t0
            res[name]["rate"].append(steps / dt)
            res[name]["wait"].append(wait / dt)
            res[name]["memory_gb"].append(memory_gb(device))
    return res


def bench(cfg: RunConfig, shards: str, *, warmup: int = 3, steps: int = 10, windows: int = 5,
          peak: float | None = None, teacher_out: str | Path | None = None) -> dict[str, Any]:
    """Run the interleaved benchmark; returns the figures ``main`` prints (one process).
    ``teacher_out``: also export the teacher it trained there (reference layout)."""
    d = setup_distributed(cfg.train.device)
    real = build_run_loader(cfg, shards, d)
    first = next(iter(real.iter_epoch(0)))
    fixed = FixedBatchLoader(first, len(real))
    samples = cfg.train.batch_size_per_gpu * d.world
    st = build_state(cfg, d, cfg.train.iters_per_epoch or len(real))
    try:
        st.model.train()
        flops = step_flops(st, first)
        streams = {"fixed batch": _stream(fixed), "pipeline": _stream(real)}
        runs = time_interleaved(st, streams, warmup, steps, windows, cfg.pipeline.prefetch + 1)
        if teacher_out is not None:
            export_teacher(st.teacher.backbone, st.teacher.dino_head, teacher_out)
    finally:
        st.masks.close()
    peak = peak if peak is not None else peak_tflops(d.device)
    out: dict[str, Any] = {"arch": cfg.model.arch, "batch_per_process": cfg.train.batch_size_per_gpu,
                           "processes": d.world, "device": str(d.device), "precision": cfg.train.precision,
                           "steps_per_window": steps, "windows": windows, "flops_per_step": flops,
                           "peak_tflops": peak, "sources": {}}
    for name, r in runs.items():
        rate = statistics.median(r["rate"])
        tflops = flops * rate / 1e12
        out["sources"][name] = {"steps_per_s": rate, "samples_per_s": rate * samples,
                                "data_wait": statistics.median(r["wait"]), "peak_memory_gb": max(r["memory_gb"]),
                                "tflops": tflops, "mfu": tflops / peak if peak else None,
                                "windows_steps_per_s": r["rate"]}
    out["pipeline_over_fixed"] = out["sources"]["pipeline"]["steps_per_s"] / out["sources"]["fixed batch"]["steps_per_s"]
    return out


def report(res: dict[str, Any]) -> str:
    """The printed summary of ``bench``."""
    lines = []
    for name, r in res["sources"].items():
        mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a (no known bf16 peak; --peak-tflops)"
        lines.append(f"{name:>12}: {r['steps_per_s']:.3f} steps/s, {r['samples_per_s']:.1f} samples/s, "
                     f"data_wait {r['data_wait']:.1%}, peak memory {r['peak_memory_gb']:.2f} GB, "
                     f"{r['tflops']:.2f} TFLOP/s, {mfu} (median of {res['windows']} windows of "
                     f"{res['steps_per_window']} steps; all: {', '.join(f'{x:.3f}' for x in r['windows_steps_per_s'])})")
    ratio = res["pipeline_over_fixed"]
    lines.append(f"pipeline / fixed = {ratio:.3f}  (share of training time lost to data: {max(0.0, 1 - ratio):.1%}; "
                 f"{res['arch']}, batch {res['batch_per_process']} x {res['processes']} on {res['device']}, "
                 f"{res['flops_per_step'] / 1e9:.1f} GFLOP per step)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints steps/s, samples/s, data_wait, memory, MFU and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--config", default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (TFLOP/s)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(RunConfig, args.config, list(args.overrides) + [f"train.output_dir={tempfile.mkdtemp()}"])
        res = bench(cfg, args.shards, warmup=args.warmup, steps=args.steps, windows=args.windows,
                    peak=args.peak_tflops)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
