"""Training throughput with the real pipeline vs the same model fed one fixed in-memory batch.

``python -m tools.bench_train --shards DIR --config PRESET [--steps N] [--windows R] [key=value ...]``

One model is fed by both sources in alternating timed windows of ``--steps`` steps (after
``--warmup`` untimed steps each; device synchronised at window edges only); medians are
printed. ``pipeline / fixed`` is the share of the data-free speed that the real loader keeps;
``1 - ratio`` is the share of training time lost to data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from tools.config import load_config
from tools.train import RunConfig, build_run_loader, build_state, setup_distributed, train_step


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


def time_interleaved(st, streams: dict[str, Any], warmup: int, steps: int, windows: int,
                     settle: int) -> dict[str, list[float]]:
    """Steps/s per timed window, alternating the streams window by window (so drift in machine
    load hits both alike). ``settle`` untimed steps before each window drain what a loader
    prefetched while the other stream was timed."""
    device = st.dist.device
    for it in streams.values():
        for _ in range(warmup):
            train_step(st, next(it), st.step)
            st.step += 1
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(windows):
        for name, it in streams.items():
            for _ in range(settle):
                train_step(st, next(it), st.step)
                st.step += 1
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(st, next(it), st.step)
                st.step += 1
            _sync(device)
            rates[name].append(steps / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints steps/s, samples/s and the pipeline/fixed ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--config", default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(RunConfig, args.config, list(args.overrides) + [f"train.output_dir={tempfile.mkdtemp()}"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    d = setup_distributed()
    real = build_run_loader(cfg, args.shards, d)
    first = next(iter(real.iter_epoch(0)))
    fixed = FixedBatchLoader(first, len(real))
    samples = cfg.train.batch_size_per_gpu * d.world
    st = build_state(cfg, d, cfg.train.iters_per_epoch or len(real))
    st.model.train()
    streams = {"fixed batch": _stream(fixed), "pipeline": _stream(real)}
    rates = time_interleaved(st, streams, args.warmup, args.steps, args.windows, cfg.pipeline.prefetch + 1)
    res = {}
    for name, r in rates.items():
        res[name] = statistics.median(r)
        print(f"{name:>12}: {res[name]:.3f} steps/s, {res[name] * samples:.1f} samples/s "
              f"(median of {args.windows} windows of {args.steps} steps; all: {', '.join(f'{x:.3f}' for x in r)})")
    ratio = res["pipeline"] / res["fixed batch"]
    print(f"pipeline / fixed = {ratio:.3f}  (share of training time lost to data: {max(0.0, 1 - ratio):.1%}; "
          f"{cfg.model.arch}, batch {cfg.train.batch_size_per_gpu} x {d.world} on {d.device.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
