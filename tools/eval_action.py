"""Action-recognition evaluation on UCF101 / HMDB51 shards: retrieval, linear probe, fine-tuning.

    python -m tools.eval_action --task ucf101-retrieval --shards DIR --ckpt CKPT [--backbone NAME] [--out DIR]
    python -m tools.eval_action --task hmdb51-linear --shards DIR --ckpt CKPT [split=2 probe.lr=0.5 ...]
    python -m tools.eval_action --task ucf101-finetune --shards DIR --ckpt CKPT [finetune.epochs=... ]
    python -m tools.eval_action --task ucf101-retrieval --features feats.npz      # score given features

Writes OUT/summary.json (fractions), OUT/run.json, OUT/config.yaml; retrieval adds
neighbours.csv, neighbours.png (from shards) and features.npz; the linear probe adds
features.npz, predictions.csv, metrics.jsonl and checkpoints/; fine-tuning predictions.csv,
metrics.jsonl and checkpoints/. Re-running the same command resumes a probe or fine-tuning run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from evaluation import retrieval
from evaluation.action_config import TASKS, ActionEvalConfig
from evaluation.action_data import ActionShards, Video
from evaluation.action_report import data_label, print_result
from evaluation.report import write_csv, write_json
from evaluation.train_loop import RunDir
from tools.config import config_to_dict, load_config, save_config

ARRAYS = ("train_feats", "train_labels", "test_feats", "test_labels")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--shards", help="shards of make shards DATA=ucf101|hmdb51")
    p.add_argument("--ckpt", help="backbone checkpoint: a T-CoRe teacher, a clip method's export, or a 3D CNN state dict")
    p.add_argument("--backbone", help="auto (from the checkpoint), tcore_vit, r3d18, r21d18, s3d, r21d_vcop, tiny")
    p.add_argument("--features", help="score these features instead (npz: " + ", ".join(ARRAYS) + ")")
    p.add_argument("--out", help="output directory (default out/eval/<task>)")
    p.add_argument("--device", help="auto (cuda if usable), cpu, cuda, cuda:N")
    p.add_argument("--config", help="YAML preset for ActionEvalConfig")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. split=2 finetune.epochs=50")
    return p.parse_intermixed_args(argv)


def build_config(args: argparse.Namespace) -> ActionEvalConfig:
    """Preset + overrides, then the explicit flags on top."""
    cfg = load_config(ActionEvalConfig, args.config, list(args.overrides))
    flags = {k: getattr(args, k) for k in ("task", "shards", "out", "device", "backbone") if getattr(args, k)}
    if args.out is None:
        flags["out"] = f"out/eval/{flags.get('task', cfg.task)}"
    cfg = dataclasses.replace(cfg, **flags)
    cfg.validate()
    if args.features and cfg.protocol == "finetune":
        raise ValueError("--features: fine-tuning trains the backbone and needs --shards, not features")
    if not args.features and not cfg.shards:
        raise ValueError("--shards: the UCF101/HMDB51 shards are required (or --features to score given features)")
    return cfg


def load_features(path: str) -> dict[str, np.ndarray]:
    """The arrays of a features file; ValueError naming the file and the missing or bad array."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such features file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [a for a in ARRAYS if a not in z.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(z.files)})")
            data = {k: z[k] for k in z.files}
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    for k in ("train_labels", "test_labels"):
        if not np.issubdtype(data[k].dtype, np.integer):
            raise ValueError(f"{path}: {k} must hold integer class ids, got {data[k].dtype}")
    retrieval.check_features(data["train_feats"].astype(np.float32), data["train_labels"],
                             data["test_feats"].astype(np.float32), data["test_labels"], path)
    return data


def _bar(console: Console, title: str) -> Progress:
    return Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal)


@dataclass
class Prepared:
    """The shards, the split's videos, the device and the backbone of a run."""

    shards: ActionShards
    train: list[Video]
    test: list[Video]
    absent: dict[str, list[str]]  # per role: keys the split lists that are not in the shards
    device: torch.device
    backbone: nn.Module
    identity: dict  # backbone, checkpoint digest, shards, split: what the results depend on

    def record(self) -> dict:
        """What run.json says about them."""
        return {"device": str(self.device), "identity": self.identity, "absent": self.absent,
                "videos": {"train": len(self.train), "test": len(self.test)}}


def prepare(cfg: ActionEvalConfig, ckpt: str | None) -> Prepared:
    """Open the shards, check they hold the task's dataset, pick the videos, build the backbone."""
    from evaluation.backbones import build_backbone, file_digest
    from model.device import resolve_device

    shards = ActionShards(cfg.shards)
    if shards.dataset != cfg.dataset:
        raise ValueError(f"{cfg.shards}: holds {shards.dataset}, the task is {cfg.task}")
    device = resolve_device(cfg.device)
    (train, absent_train), (test, absent_test) = shards.videos(cfg.split, "train"), shards.videos(cfg.split, "test")
    backbone, name = build_backbone(cfg.backbone, ckpt, device)
    identity = {"backbone": name, "checkpoint": file_digest(ckpt) if ckpt else "random-init",
                "shards": shards.identity, "split": cfg.split}
    return Prepared(shards, train, test, {"train": absent_train, "test": absent_test}, device, backbone, identity)


def shard_features(cfg: ActionEvalConfig, run: Prepared, console: Console) -> tuple[dict[str, np.ndarray], dict]:
    """Features of the split's train and test videos (cached), as the arrays of a features file."""
    from evaluation.action_features import cache_path, extract
    from evaluation.clip_source import make_clip_source

    ident = {k: v for k, v in run.identity.items() if k != "split"}  # one cache for all splits
    cache = cache_path(cfg.features, ident)
    source = make_clip_source(cfg.features.clips, cfg.clip_reader, run.device, cfg.workers)
    start = time.perf_counter()
    with _bar(console, "features") as bar:
        task = bar.add_task("videos", total=len(run.train) + len(run.test))
        feats = [extract(run.backbone, source, vids, cfg.features, run.device, cache, lambda n: bar.advance(task, n))
                 for vids in (run.train, run.test)]
    arrays = {"train_feats": feats[0], "train_labels": np.array([v.label for v in run.train]),
              "test_feats": feats[1], "test_labels": np.array([v.label for v in run.test]),
              "train_keys": np.array([v.key for v in run.train]), "test_keys": np.array([v.key for v in run.test]),
              "generated": np.array(run.shards.generated or "")}
    return arrays, {"cache": str(cache) if cache else None, "features_s": time.perf_counter() - start}


def run_retrieval(cfg: ActionEvalConfig, arrays: dict, classes: list[str], run: Prepared | None, out: Path) -> dict:
    """Recall at k, neighbours.csv and (from shards) neighbours.png."""
    summary, sims, idx = retrieval.score(arrays["train_feats"], arrays["train_labels"], arrays["test_feats"],
                                         arrays["test_labels"], cfg.retrieval)
    keys = {s: arrays.get(f"{s}_keys", np.arange(len(arrays[f"{s}_labels"])).astype(str)).tolist()
            for s in ("train", "test")}
    header, rows = retrieval.neighbour_rows(sims, idx, keys["test"], arrays["test_labels"], keys["train"],
                                            arrays["train_labels"], classes, cfg.retrieval.neighbours)
    write_csv(out / "neighbours.csv", header, rows)
    if run is not None and cfg.retrieval.png_queries:
        retrieval.draw_neighbours(out / "neighbours.png", run.test, run.train, sims, idx, classes, cfg.retrieval)
    return summary


def run_probe(cfg: ActionEvalConfig, arrays: dict, classes: list[str], out: Path, console: Console) -> dict:
    """Train (or resume) the linear probe on the features; predictions.csv."""
    from evaluation.linear_probe import train_probe
    from model.device import resolve_device

    digest = hashlib.sha1(b"".join(np.ascontiguousarray(arrays[a]).tobytes() for a in ARRAYS)).hexdigest()[:16]
    probe = {k: v for k, v in dataclasses.asdict(cfg.probe).items() if k != "max_steps"}
    run = RunDir(out, {"task": cfg.task, "split": cfg.split, "probe": probe, "features": digest}, console)
    num_classes = len(classes) or int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    summary, probs = train_probe(arrays["train_feats"], arrays["train_labels"], arrays["test_feats"],
                                 arrays["test_labels"], num_classes, cfg.probe, run, resolve_device(cfg.device))
    keys = arrays.get("test_keys", np.arange(len(probs)).astype(str)).tolist()
    write_predictions(out / "predictions.csv", keys, arrays["test_labels"], probs, classes)
    return summary


def write_predictions(path: Path, keys: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """predictions.csv: key, true class, predicted class, its probability, correct."""
    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    pred = probs.argmax(axis=1)
    rows = [[k, name(int(y)), name(int(p)), float(probs[i, p]), int(p == y)]
            for i, (k, y, p) in enumerate(zip(keys, labels, pred))]
    write_csv(path, ["key", "class", "predicted", "probability", "correct"], rows)


def run_finetune(cfg: ActionEvalConfig, run: Prepared, out: Path, console: Console) -> tuple[dict, dict]:
    """Fine-tune the backbone on the split's train videos and test it; predictions.csv."""
    from evaluation.clip_source import make_clip_source
    from evaluation.finetune import finetune

    settings = {k: v for k, v in dataclasses.asdict(cfg.finetune).items() if k not in ("max_steps", "test_batch_videos")}
    signature = {"task": cfg.task, "finetune": settings, **run.identity}
    start = time.perf_counter()
    classes = run.shards.classes
    summary, probs = finetune(run.backbone, run.train, run.test, len(classes),
                              make_clip_source(cfg.finetune.clips, cfg.clip_reader, run.device, cfg.workers), cfg.finetune,
                              RunDir(out, signature, console), run.device)
    write_predictions(out / "predictions.csv", [v.key for v in run.test], np.array([v.label for v in run.test]),
                      probs, classes)
    return summary, {"train_s": time.perf_counter() - start}


def evaluate(args: argparse.Namespace, console: Console | None = None) -> dict:
    """Run one evaluation; returns summary.json's content."""
    console = console or Console()
    if not console.is_terminal:
        console.width = 160  # logs: keep the comparison table on one line per row
    cfg = build_config(args)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    record = {"task": cfg.task, "ckpt": args.ckpt, "features": args.features}
    run, classes, known = None, [], True
    if args.features:
        arrays = load_features(args.features)
        known = "generated" in arrays  # our features files say whether their data was generated
        generated = str(arrays["generated"]) if known else None
        backbone = "given features"
    else:
        run = prepare(cfg, args.ckpt)
        record.update(run.record())
        classes, generated, backbone = run.shards.classes, run.shards.generated, run.identity["backbone"]
    generated = generated or None
    if cfg.protocol == "finetune":
        metrics, extra = run_finetune(cfg, run, out, console)
    else:
        extra = {}
        if run is not None:
            arrays, extra = shard_features(cfg, run, console)
            np.savez(out / "features.npz", **arrays)
        metrics = (run_retrieval(cfg, arrays, classes, run, out) if cfg.protocol == "retrieval"
                   else run_probe(cfg, arrays, classes, out, console))
    data = data_label(cfg.dataset, generated, known)
    summary = {**metrics, "dataset": cfg.dataset, "split": cfg.split, "backbone": backbone, "data": data}
    write_json(out / "summary.json", summary)
    write_json(out / "run.json", {**record, **extra, "generated_data": generated, "config": config_to_dict(cfg)})
    pretraining = Path(args.ckpt).name if args.ckpt else ("–" if args.features else "random init")
    print_result(cfg.dataset, cfg.protocol, cfg.split, metrics, f"this run: {backbone}", pretraining, data,
                 generated, console)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
