"""One command that exercises the GPU path and records what it measured: ``make gpu-check``.

``python -m tools.gpu_check [--out data/gpu_check] [--shards DIR]``

Parts (each recorded in ``OUT/gpu_check.json``, drawn in ``OUT/gpu_check.png``; any failure
makes the exit code 1):

- ``gpu_tests``: ``pytest -m gpu`` (the training step under ``set_sync_debug_mode("error")``, ...);
- ``loader``: the DALI loader in both read modes with the ViT-S preset's views: shapes, dtypes
  and devices of every batch entry, triplets/s, decoded frames per delivered frame;
- ``bench_train``: ViT-S real loader vs one in-memory batch (``tools.bench_train``): samples/s,
  data_wait, peak memory, model FLOP/s and MFU;
- ``ddp``: a 2-process DDP run of ``tools.train`` when 2 GPUs are visible (ranks must agree);
- ``propagation``: DAVIS-style label propagation on the GPU with the benchmark's teacher, on the
  generated set of ``evaluation.synthetic``;
- ``action_features``: UCF101-retrieval features of the generated UCF101-layout set with an R3D-18,
  once through the DALI clip reader on the device and once through the PIL reader: recall of
  both (they must agree) and the extraction times.

Without a usable CUDA device it stops at once with one line saying so (exit 2), before writing
anything. It builds the sample shards itself (the ``make shards`` path) unless ``--shards`` is
given. ``--device cpu --quick`` (hidden) runs the same parts on the CPU at toy sizes, for tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from model.device import driver_version, resolve_device
from tools.config import load_config
from tools.train import RunConfig

ROOT = Path(__file__).resolve().parents[1]
VITS = ROOT / "configs" / "tcore_vits16_k400.yaml"
TINY = ROOT / "configs" / "tcore_tiny_cpu.yaml"


class Sizes:
    """Work per part: the real check on a GPU, toy sizes with ``--quick``."""

    def __init__(self, quick: bool) -> None:
        self.preset = TINY if quick else VITS
        self.batch = 4 if quick else 32
        self.loader_batches, self.loader_repeats = (2, 1) if quick else (10, 3)
        # bench: 2 x (warm-up 5 + 2 windows x (settle 3 + 10 steps)) = 62 steps, 40 of them timed
        self.warmup, self.steps, self.windows = (1, 2, 1) if quick else (5, 10, 2)
        self.ddp_steps = 2 if quick else 20
        # action features: DualVar's retrieval protocol on an R3D-18, or toy clips on the tiny 3D CNN
        self.action = (["--backbone", "tiny", "features.clips.num_clips=2", "features.clips.clip_len=8",
                        "features.clips.resize=[72,96]", "features.clips.crop=64"] if quick
                       else ["--backbone", "r3d18", "features.batch_videos=8"])


def run_config(sizes: Sizes, device: torch.device, out: Path, *overrides: str) -> RunConfig:
    """The preset with this check's batch, device and a repeat count that covers every part."""
    return load_config(RunConfig, str(sizes.preset), [
        f"train.batch_size_per_gpu={sizes.batch}", f"train.device={device.type}", f"train.output_dir={out}",
        "pipeline.repeat=64", *overrides])


def ensure_shards(shards: str | None, out: Path) -> Path:
    """``--shards``, or the sample shards built into ``OUT/sample_shards`` (resumable, so cheap to redo)."""
    if shards:
        if not (Path(shards) / "dataset.json").is_file():
            raise ValueError(f"--shards {shards}: no dataset.json there (not a shards directory)")
        return Path(shards)
    from shards.cli import main as shards_main

    target = out / "sample_shards"
    if shards_main(["--data", "sample", "--out", str(target), "--shard-mb", "4"]) != 0:
        raise RuntimeError(f"building the sample shards in {target} failed")
    return target


def describe(batch: dict[str, Any]) -> dict[str, Any]:
    """Shape, dtype and device of every tensor of a batch (lists by length)."""
    return {k: ({"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "device": str(v.device)}
                if torch.is_tensor(v) else {"list": len(v)}) for k, v in batch.items()}


def part_loader(sizes: Sizes, device: torch.device, shards: Path, out: Path) -> dict[str, Any]:
    """Both read modes: placement and shapes of the batch, then throughput (``pipeline.bench.measure``)."""
    from pipeline.bench import measure
    from pipeline.loader import build_loader

    res: dict[str, Any] = {"failures": []}
    for mode in ("whole", "range"):
        cfg = run_config(sizes, device, out, f"pipeline.read_mode={mode}").pipeline
        loader = build_loader(cfg, shards, batch_size=sizes.batch, device=str(device))
        batch = next(iter(loader.iter_epoch(0)))
        entry = {"batch": describe(batch)}
        views = {"current_global": cfg.num_global, "current_local": cfg.num_local, "past": 2, "future": 2}
        for name, n in views.items():
            size = cfg.local_size if name == "current_local" else cfg.global_size
            want = [sizes.batch, n, 3, size, size]
            got = entry["batch"].get(name, {})
            if got.get("shape") != want or got.get("dtype") != cfg.dtype or got.get("device") != str(device):
                res["failures"].append(f"{mode}: {name} is {got}, expected shape {want}, {cfg.dtype} on {device}")
        del batch, loader

        def make(cfg=cfg):
            return build_loader(cfg, shards, batch_size=sizes.batch, device=str(device)).iter_epoch(0)

        entry |= measure(make, batch_size=sizes.batch, batches=sizes.loader_batches,
                         repeats=sizes.loader_repeats, warmup=2)
        res[mode] = entry
    return res


def part_bench(sizes: Sizes, device: torch.device, shards: Path, out: Path) -> dict[str, Any]:
    """``tools.bench_train`` on the preset; exports the teacher it trained for the propagation part."""
    from tools.bench_train import bench

    cfg = run_config(sizes, device, out / "bench")
    res = bench(cfg, str(shards), warmup=sizes.warmup, steps=sizes.steps, windows=sizes.windows,
                teacher_out=out / "bench_teacher.pth")
    res["failures"] = [f"{name}: {r['samples_per_s']} samples/s" for name, r in res["sources"].items()
                       if not r["samples_per_s"] > 0]
    return res


def part_ddp(sizes: Sizes, device: torch.device, shards: Path, out: Path) -> dict[str, Any]:
    """Two processes of ``tools.train`` (NCCL on 2 GPUs; gloo with ``--device cpu``): ranks must agree."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU visible; the DDP part needs 2", "failures": []}
    run = out / "ddp"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume of the last check's
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "tools.train", "--shards", str(shards), "--config", str(sizes.preset), "--out", str(run),
           f"train.device={device.type}", f"train.batch_size_per_gpu={sizes.batch}", "pipeline.repeat=64",
           f"train.max_steps={sizes.ddp_steps}", f"train.log_every={max(1, sizes.ddp_steps // 2)}",
           "train.tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    res: dict[str, Any] = {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "failures": []}
    if proc.returncode != 0:
        res["failures"].append(f"torchrun exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        return res
    summary = json.loads((run / "summary.json").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    res |= {"world_size": summary["world_size"], "param_checksums": summary["param_checksums"],
            "samples_per_s": recs[-1]["samples_per_s"], "data_wait": recs[-1]["data_wait"],
            "memory_gb": recs[-1]["memory_gb"], "loss": recs[-1]["loss"]}
    if len(set(summary["param_checksums"])) != 1:
        res["failures"].append(f"ranks disagree after {sizes.ddp_steps} steps: {summary['param_checksums']}")
    return res


def part_propagation(sizes: Sizes, device: torch.device, out: Path) -> dict[str, Any]:
    """Label propagation with the benchmark's teacher on the generated DAVIS set."""
    from evaluation.synthetic import write_davis
    from tools.eval_propagation import main as eval_main

    teacher = out / "bench_teacher.pth"
    if not teacher.is_file():
        return {"failures": ["no teacher from the bench_train part to evaluate"]}
    data = write_davis(out / "eval_data" / "davis")
    run = out / "eval_davis"
    args = ["--ckpt", str(teacher), "--task", "davis", "--root", str(data), "--out", str(run),
            "--device", str(device)]
    if sizes.preset == TINY:
        args.append("input_size=[64,112]")
    code = eval_main(args)
    if code != 0:
        return {"failures": [f"tools.eval_propagation exited {code}"]}
    summary = json.loads((run / "summary.json").read_text())
    info = json.loads((run / "run.json").read_text())
    failures = [] if info["device"] == str(device) else [f"ran on {info['device']}, not {device}"]
    failures += [f"{k} = {v}" for k, v in summary.items() if not math.isfinite(v)]
    return {"summary": summary, "timing": info["timing"], "device": info["device"], "failures": failures}


def part_action_features(sizes: Sizes, device: torch.device, out: Path) -> dict[str, Any]:
    """Retrieval features of the generated UCF101 set through the DALI clip reader on ``device``
    and through the PIL reader: the same recall, and both readers' extraction times."""
    from evaluation.action_synthetic import write_ucf101
    from shards.cli import main as shards_main
    from tools.eval_action import main as eval_main

    root, shards = out / "eval_data" / "ucf101", out / "eval_data" / "ucf101_shards"
    if not (shards / "action.json").is_file():
        if not root.is_dir():
            write_ucf101(root)
        if shards_main(["--data", "ucf101", "--root", str(root), "--out", str(shards), "--workers", "4"]) != 0:
            return {"failures": ["sharding the generated UCF101 set failed"]}
    res: dict[str, Any] = {"failures": []}
    for reader in ("dali", "pil"):
        run = out / f"eval_ucf101_{reader}"
        code = eval_main(["--task", "ucf101-retrieval", "--shards", str(shards), "--out", str(run), "--device",
                          str(device), f"clip_reader={reader}", "features.cache_dir=", *sizes.action])
        if code != 0:
            res["failures"].append(f"tools.eval_action with clip_reader={reader} exited {code}")
            continue
        summary = json.loads((run / "summary.json").read_text())
        info = json.loads((run / "run.json").read_text())
        res[reader] = {"R@1": summary["R@1"], "features_s": info["features_s"], "device": info["device"]}
    if not res["failures"] and abs(res["dali"]["R@1"] - res["pil"]["R@1"]) > 0.1:  # same clips up to resampling
        res["failures"].append(f"R@1 differs between readers: dali {res['dali']['R@1']}, pil {res['pil']['R@1']}")
    if not res["failures"]:
        res["pil_over_dali_time"] = res["pil"]["features_s"] / res["dali"]["features_s"]
    return res


def part_gpu_tests() -> dict[str, Any]:
    """The ``gpu``-marked tests (CUDA only)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"returncode": proc.returncode, "summary": tail[0],
            "failures": [] if proc.returncode == 0 else [proc.stdout.strip()[-3000:]]}


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    import nvidia.dali as dali

    env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "dali": dali.__version__,
           "driver": driver_version(), "cpu_cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        env |= {"gpu": torch.cuda.get_device_name(device), "gpus_visible": torch.cuda.device_count(),
                "compute_capability": f"{cap[0]}.{cap[1]}",
                "gpu_memory_gb": torch.cuda.get_device_properties(device).total_memory / 2**30}
    return env


def run_part(report: dict[str, Any], name: str, fn) -> Any:
    """Run one part, record its result (an exception fails that part only), print one line."""
    t0 = time.perf_counter()
    print(f"gpu-check: {name} ...", flush=True)
    try:
        res = fn()
    except Exception as exc:  # noqa: BLE001 - a broken part is a recorded failure, the others still run
        res = {"failures": [f"{type(exc).__name__}: {exc}"], "traceback": traceback.format_exc()[-3000:]}
    res["seconds"] = time.perf_counter() - t0
    report["parts"][name] = res
    print(f"gpu-check: {name}: {'ok' if not res['failures'] else 'FAILED: ' + res['failures'][0][:300]} "
          f"({res['seconds']:.0f} s)", flush=True)
    return res


def run_parts(args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    """Every part in turn (the data parts only when there are shards). Returns the report."""
    sizes = Sizes(args.quick)
    report: dict[str, Any] = {"environment": environment(device), "quick": args.quick, "parts": {}}
    if device.type == "cuda":  # without CUDA they skip themselves
        run_part(report, "gpu_tests", part_gpu_tests)
    got = run_part(report, "shards", lambda: {"path": str(ensure_shards(args.shards, out)), "failures": []})
    if not got["failures"]:
        shards = Path(got["path"])
        run_part(report, "loader", lambda: part_loader(sizes, device, shards, out))
        run_part(report, "bench_train", lambda: part_bench(sizes, device, shards, out))
        run_part(report, "ddp", lambda: part_ddp(sizes, device, shards, out))
        run_part(report, "propagation", lambda: part_propagation(sizes, device, out))
    run_part(report, "action_features", lambda: part_action_features(sizes, device, out))
    report["failures"] = [f"{n}: {f}" for n, r in report["parts"].items() for f in r["failures"]]
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    """Four panels: loader triplets/s, training samples/s, peak memory, propagation scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = report["parts"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    ld = parts.get("loader", {})
    modes = [m for m in ("whole", "range") if "triplets_per_s" in ld.get(m, {})]
    axes[0].bar(modes, [ld[m]["triplets_per_s"] for m in modes])
    axes[0].set_title("loader: triplets/s")
    src = parts.get("bench_train", {}).get("sources", {})
    rates = {n: src[n]["samples_per_s"] for n in src}
    if "samples_per_s" in parts.get("ddp", {}):
        rates["ddp, 2 processes"] = parts["ddp"]["samples_per_s"]
    names = list(src)
    axes[1].bar(list(rates), list(rates.values()))
    mfu = [f"{n}: MFU {src[n]['mfu']:.1%}" for n in names if src[n].get("mfu") is not None]
    axes[1].set_title("train samples/s" + (f"\n{', '.join(mfu)}" if mfu else ""), fontsize=9)
    mem = {n: src[n]["peak_memory_gb"] for n in names}
    if "memory_gb" in parts.get("ddp", {}):
        mem["ddp (rank 0)"] = parts["ddp"]["memory_gb"]
    axes[2].bar(list(mem), list(mem.values()))
    axes[2].set_title("peak memory, GB")
    scores = parts.get("propagation", {}).get("summary", {})
    axes[3].bar(list(scores), list(scores.values()))
    axes[3].set_title("generated DAVIS (plumbing only)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    env = report["environment"]
    fig.suptitle(f"gpu-check on {env.get('gpu', env['device'])}: "
                 f"{'ok' if not report['failures'] else str(len(report['failures'])) + ' failure(s)'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/gpu_check", help="folder for gpu_check.json, gpu_check.png and work files")
    ap.add_argument("--shards", default=None, help="shards to read (default: build the sample shards in OUT)")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # tests: cpu
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # tests: toy sizes
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every part passed, 1 on any failure, 2 when no usable GPU is there."""
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: gpu-check needs a usable CUDA GPU and found none: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = run_parts(args, device, out)
    report["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot(report, out / "gpu_check.png")
    status = "all parts passed" if not report["failures"] else f"{len(report['failures'])} failure(s)"
    print(f"gpu-check: {status} in {report['seconds']:.0f} s; wrote {out / 'gpu_check.json'} and "
          f"{out / 'gpu_check.png'}")
    for line in report["failures"]:
        print(f"  {line[:500]}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
