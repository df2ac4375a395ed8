"""Label-propagation evaluation on DAVIS-2017, JHMDB or VIP.

    python -m tools.eval_propagation --ckpt teacher.pth --task davis --root DAVIS [--out DIR]
    python -m tools.eval_propagation --task davis --root DAVIS --results RESULTS_DIR [--out DIR]
    ... [--config preset.yaml] [propagation.topk=5 input_size=[240,432] ...]

Writes OUT/summary.json, OUT/per_object.csv, OUT/run.json, OUT/overlays/<seq>/*.png and, for
DAVIS runs with a model, OUT/results/<seq>/<frame>.png (scorable again with --results).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from evaluation.config import EvalConfig, resolve_device
from evaluation.datasets import generated_note, read_davis, read_jhmdb, read_vip
from evaluation.report import print_report, write_csv, write_json
from evaluation.runner import run_davis, run_jhmdb, run_vip, score_davis
from tools.config import config_to_dict, load_config, save_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="teacher checkpoint: reference {'teacher': ...} file or ours")
    p.add_argument("--task", choices=["davis", "jhmdb", "vip"])
    p.add_argument("--root", help="dataset root in the benchmark's official layout")
    p.add_argument("--out", help="output directory (default out/eval/<task>)")
    p.add_argument("--results", help="DAVIS only: score this <seq>/<frame>.png folder, no model")
    p.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--config", help="YAML preset for EvalConfig")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. propagation.topk=5")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> EvalConfig:
    """Preset + overrides, then the explicit flags on top (taken verbatim, not YAML-parsed)."""
    cfg = load_config(EvalConfig, args.config, list(args.overrides))
    flags = {k: getattr(args, k) for k in ("task", "root", "out", "device") if getattr(args, k)}
    if args.out is None and args.task is not None:
        flags["out"] = f"out/eval/{args.task}"
    cfg = dataclasses.replace(cfg, **flags)
    cfg.validate()
    if not cfg.root:
        raise ValueError("--root: the dataset directory is required")
    return cfg


def feature_function(ckpt: str, device):
    """The teacher backbone's final-norm patch tokens ``[B, h, w, D]`` as a callable."""
    from model.checkpoint import load_teacher_backbone

    backbone = load_teacher_backbone(ckpt, device=device)
    return backbone.get_patch_tokens


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    """Run one evaluation; returns the summary metrics (fractions)."""
    cfg = build_config(args)
    out = Path(cfg.out)
    if args.results and cfg.task != "davis":
        raise ValueError("--results: only DAVIS-style result folders can be scored without a model")
    if not args.results and not args.ckpt:
        raise ValueError("--ckpt: a checkpoint is required unless --results is given")
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    timing: dict[str, float] = {}
    if cfg.task == "davis":
        videos = read_davis(cfg.root, cfg.davis_split, cfg.davis_resolution)
        results = Path(args.results) if args.results else out / "results"
        if not args.results:
            timing = run_davis(videos, feature_function(args.ckpt, device), cfg, device, out)
        summary, header, rows, _ = score_davis(videos, results, out, cfg.overlays_per_video)
    elif cfg.task == "jhmdb":
        videos = read_jhmdb(cfg.root, cfg.jhmdb_split)
        summary, header, rows, timing = run_jhmdb(videos, feature_function(args.ckpt, device), cfg, device, out)
    else:
        videos = read_vip(cfg.root, cfg.vip_split)
        summary, header, rows, timing = run_vip(videos, feature_function(args.ckpt, device), cfg, device, out)
    write_json(out / "summary.json", summary)
    write_csv(out / "per_object.csv", header, rows)
    write_json(out / "run.json", {"ckpt": args.ckpt, "results": args.results, "device": str(device),
                                  "generated_data": generated_note(cfg.root),
                                  "videos": len(videos), "timing": timing, "config": config_to_dict(cfg)})
    label = "this run" if not args.results else f"results: {Path(args.results).name}"
    print_report(cfg.task, summary, timing, label, generated=generated_note(cfg.root))
    return summary


def main(argv: list[str] | None = None) -> int:
    np.seterr(divide="ignore", invalid="ignore")
    args = parse_args(argv)
    try:
        evaluate(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
