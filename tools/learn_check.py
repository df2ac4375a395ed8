"""Does training learn? Random-init vs trained teacher on data that colour and position cannot solve.

    python -m tools.learn_check [--out DIR] [--config PRESET] [--seeds 0,1] [--ceiling-steps N] [key.sub=value ...]

Stages (each skipped when its output is already there, so a re-run resumes):
1. the digit world (``evaluation.digits``): training clips and labelled held-out clips in the
   Kinetics layout, held-out DAVIS-layout videos with 2-3 digits each;
2. shards of the clips (``FPS=0 SIZE=128``: the source's 10 fps and 128-px frames);
3. per seed: the initial teacher (``train.max_steps=0``) and a trained one, both from
   ``python -m tools.train`` exactly as ``make train`` runs it;
4. per seed and model: J&F of label propagation on the held-out videos and k-NN top-1 of the
   teacher's class token (gallery = training clips, queries = held-out clips); a raw-pixel
   baseline for propagation;
5. with ``--ceiling-steps N``: the k-NN probe's supervised ceiling (``evaluation.ceiling``): the
   first seed's initial backbone trained with the labels for N steps on the training clips, its
   held-out top-1 beside the k-NN scores.

Writes ``OUT/learn_check.json``, ``OUT/learn_check.png`` (loss terms, collapse monitors, metric
bars) and prints a table. All scores are on generated data: they say whether the trainer learns,
nothing about real benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evaluation import digits
from evaluation.config import EvalConfig, PropagationConfig
from evaluation.datasets import read_davis
from evaluation.knn import clip_features, knn_top1
from evaluation.runner import run_davis, score_davis

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CheckConfig:
    """What the check builds, trains and measures."""

    out: str = "out/learn_check"
    config: str = "configs/tcore_small_cpu.yaml"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    n_train: int = 192
    n_val: int = 96
    n_davis: int = 12
    knn_k: int = 20
    knn_frames: int = 3  # frames per clip averaged into its feature
    knn_size: tuple[int, int] = (64, 64)  # network input for k-NN: a square crop around the main digit
    ceiling_steps: int = 0  # > 0: supervised ceiling of the k-NN probe, trained this many steps
    ceiling_frames: int = 8  # frames per training clip the ceiling trains on
    davis_size: tuple[int, int] = (256, 320)  # propagation input: 2x the frames, as 480x880 is ~2x the training scale on real DAVIS
    overrides: list[str] = field(default_factory=list)  # trainer key.sub=value


def build_data(cfg: CheckConfig, log) -> tuple[Path, Path]:
    """The digit world and its shards under ``cfg.out`` (kept when already complete)."""
    from shards.cli import main as shards_main

    out = Path(cfg.out)
    world, shards = out / "world", out / "shards"
    if not (world / "done").is_file():
        log(f"writing the digit world ({cfg.n_train} training clips, {cfg.n_val} held-out clips, "
            f"{cfg.n_davis} DAVIS-layout videos) to {world}")
        digits.write_kinetics(world / "kinetics", cfg.n_train, cfg.n_val)
        digits.write_davis(world / "davis", cfg.n_davis)
        (world / "done").write_text("ok\n")
    if not (shards / "dataset.json").is_file():
        code = shards_main(["--data", "kinetics", "--root", str(world / "kinetics"), "--out", str(shards),
                            "--fps", "0", "--size", "128", "--shard-mb", "16"])
        if code != 0:
            raise ValueError(f"sharding {world / 'kinetics'} failed (exit {code})")
    return world, shards


def train(cfg: CheckConfig, shards: Path, run_dir: Path, seed: int, steps: int | None) -> Path:
    """``python -m tools.train`` into ``run_dir``; returns its teacher.pth (kept when present)."""
    teacher = run_dir / "teacher.pth"
    if teacher.is_file():
        return teacher
    cmd = [sys.executable, "-m", "tools.train", "--shards", str(shards), "--config", cfg.config,
           "--out", str(run_dir), f"train.seed={seed}", f"pipeline.seed={seed}", *cfg.overrides]
    if steps is not None:
        cmd.append(f"train.max_steps={steps}")
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        raise ValueError(f"training into {run_dir} failed (exit {res.returncode})")
    return teacher


def square_box(box: list[int], h: int, w: int, margin: float = 0.15) -> tuple[int, int, int, int]:
    """The square around ``[x0, y0, x1, y1]`` with ``margin`` on each side, shifted inside an ``h × w`` frame."""
    x0, y0, x1, y1 = box
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = min(side, h, w)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(round(cx - side / 2), 0), w - side))
    top = int(min(max(round(cy - side / 2), 0), h - side))
    return left, top, left + side, top + side


def object_crops(shards: Path, split: str, boxes: dict, n: int, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops around the main digit in ``n`` evenly spaced frames of every clip of a split:
    uint8 [N, n, 3, *size], labels [N]."""
    from torchvision.io import decode_jpeg

    from pipeline.dataset import open_split

    clips, labels = [], []
    for ref in open_split(shards, split).samples:
        jpegs = ref.frame_jpegs()
        crops = []
        for i in [round((k + 1) * (len(jpegs) - 1) / (n + 1)) for k in range(n)]:
            img = decode_jpeg(torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8))
            x0, y0, x1, y1 = square_box(boxes[ref.key][i], *img.shape[1:])
            crop = img[None, :, y0:y1, x0:x1].float()
            crops.append(F.interpolate(crop, size=size, mode="bilinear", antialias=True)[0].round().byte())
        clips.append(torch.stack(crops))
        labels.append(ref.label_id)
    return torch.stack(clips), torch.tensor(labels)


def pixel_features(patch: int):
    """Raw-pixel baseline: each patch's normalised RGB values as its feature ``[B, h, w, 3·p²]``."""
    def features(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cells = F.unfold(x, patch, stride=patch)  # [B, 3·p², h·w]
        cells = cells - cells.mean(1, keepdim=True)
        return cells.transpose(1, 2).reshape(b, h // patch, w // patch, -1)
    return features


def davis_jf(feature_fn, davis: Path, out: Path, size: tuple[int, int]) -> float:
    """J&F-Mean in [0, 1] of label propagation with ``feature_fn`` on the DAVIS-layout videos."""
    ecfg = EvalConfig(task="davis", root=str(davis), out=str(out), device="cpu", input_size=size,
                      overlays_per_video=1, propagation=PropagationConfig())
    videos = read_davis(davis)
    run_davis(videos, feature_fn, ecfg, torch.device("cpu"), out)
    summary, _, _, _ = score_davis(videos, out / "results", out, ecfg.overlays_per_video)
    return float(summary["J&F-Mean"])


def evaluate_teacher(cfg: CheckConfig, ckpt: Path, data: dict, out: Path) -> dict[str, float]:
    """J&F and k-NN top-1 of one exported teacher."""
    from model.checkpoint import load_teacher_backbone

    backbone = load_teacher_backbone(ckpt)
    jf = davis_jf(backbone.get_patch_tokens, data["davis"], out / "davis", cfg.davis_size)
    train_f = clip_features(backbone, data["train"][0], cfg.knn_size)
    val_f = clip_features(backbone, data["val"][0], cfg.knn_size)
    top1 = knn_top1(train_f, data["train"][1], val_f, data["val"][1], cfg.knn_k)
    return {"jf": jf, "knn_top1": top1}


MONITORS = ("loss_dino", "stat_teacher_entropy", "stat_teacher_usage", "stat_cls_std")


def final_stats(run_dir: Path, tail: float = 0.1) -> dict[str, float]:
    """Means over the last ``tail`` of the logged steps: L_DINO and the collapse monitors."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = recs[-max(1, math.ceil(tail * len(recs))):]
    return {k: statistics.fmean(r[k] for r in last) for k in MONITORS if all(k in r for r in last)}


def run_seed(cfg: CheckConfig, seed: int, shards: Path, data: dict, log) -> dict:
    """Initial and trained teacher of one seed, both evaluated."""
    out = Path(cfg.out) / f"seed{seed}"
    init = train(cfg, shards, out / "init", seed, steps=0)
    trained_dir = out / "trained"
    trained = train(cfg, shards, trained_dir, seed, steps=None)
    res = {"seed": seed, "random": evaluate_teacher(cfg, init, data, out / "eval_random"),
           "trained": evaluate_teacher(cfg, trained, data, out / "eval_trained"),
           "final": final_stats(trained_dir)}
    log(f"seed {seed}: random {res['random']}, trained {res['trained']}, last 10 %: {res['final']}")
    return res


def collapse_verdict(final: dict[str, float], ln_k: float, dim: int) -> dict[str, bool]:
    """A run has collapsed when its class tokens stop varying (std below 0.5/sqrt(D)), its teacher
    targets turn uniform (entropy above 0.9 ln K), or one prototype takes the batch (the batch-mean
    target uses fewer than 4 prototypes, ln 4)."""
    return {"tokens_spread": final.get("stat_cls_std", 0.0) >= 0.5 / math.sqrt(dim),
            "targets_not_uniform": final.get("stat_teacher_entropy", ln_k) <= 0.9 * ln_k,
            "prototypes_used": final.get("stat_teacher_usage", 0.0) >= math.log(4)}


def summarise(cfg: CheckConfig, runs: list[dict], pixels_jf: float, ln_k: float, dim: int) -> dict:
    """The report: per-seed runs, medians over seeds, and whether each target is met."""
    def med(model: str, key: str) -> float:
        return statistics.median(r[model][key] for r in runs)

    loss_final = statistics.median(r["final"]["loss_dino"] for r in runs)
    median = {m: {k: med(m, k) for k in ("jf", "knn_top1")} for m in ("random", "trained")}
    verdicts = [collapse_verdict(r["final"], ln_k, dim) for r in runs]
    return {
        "ln_k": ln_k, "loss_dino_final": loss_final, "config": cfg.config, "overrides": cfg.overrides,
        "runs": [{**r, "pixels": {"jf": pixels_jf}, "collapse": v} for r, v in zip(runs, verdicts)],
        "median": median | {"pixels": {"jf": pixels_jf}},
        "targets": {
            "jf_gain_10pt": median["trained"]["jf"] - median["random"]["jf"] >= 0.10,
            "knn_gain_15pt": median["trained"]["knn_top1"] - median["random"]["knn_top1"] >= 0.15,
            "loss_dino_below_0.7_ln_k": loss_final < 0.7 * ln_k,
            "no_collapse": all(all(v.values()) for v in verdicts),
        },
        "note": "generated data (the digit world): says whether the trainer learns, nothing about any "
                "real benchmark",
    }


def ceiling(cfg: CheckConfig, shards: Path, boxes: dict, val: tuple, log) -> dict[str, dict[str, float]]:
    """The k-NN probe's supervised ceiling from the first seed's initial teacher (kept when measured):
    ``{"world": …, "clean": …}``, the world's crops and clean renderings of the same scans."""
    from evaluation.ceiling import supervised_ceiling
    from model.checkpoint import load_teacher_backbone

    path = Path(cfg.out) / f"ceiling_{cfg.ceiling_steps}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if {"world", "clean"} <= cached.keys():
            return cached
    init = Path(cfg.out) / f"seed{cfg.seeds[0]}" / "init" / "teacher.pth"
    side = cfg.knn_size[0]
    sets = {"world": (object_crops(shards, "train", boxes, cfg.ceiling_frames, cfg.knn_size), val),
            "clean": tuple((torch.from_numpy(x), torch.from_numpy(y)) for x, y in
                           (digits.clean_crops(cfg.n_train, False, side), digits.clean_crops(cfg.n_val, True, side)))}
    res = {}
    for name, (train, held) in sets.items():
        log(f"supervised ceiling on the {name} crops")
        res[name] = supervised_ceiling(load_teacher_backbone(init), train, held, cfg.knn_size,
                                       steps=cfg.ceiling_steps, log=log)
    path.write_text(json.dumps(res) + "\n")
    return res


def print_report(report: dict) -> None:
    """Random-init vs trained vs pixels, per seed and median, and the targets."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="learning check on GENERATED data (digit world); not comparable to published numbers")
    for col in ("run", "J&F random", "J&F trained", "J&F pixels", "k-NN random", "k-NN trained",
                "L_DINO end / ln K", "teacher entropy"):
        table.add_column(col, justify="right")
    rows = [(f"seed {r['seed']}", r["random"], r["trained"], r["final"]) for r in report["runs"]]
    for name, rnd, trn, fin in rows:
        table.add_row(name, f"{rnd['jf']:.3f}", f"{trn['jf']:.3f}", f"{report['median']['pixels']['jf']:.3f}",
                      f"{rnd['knn_top1']:.3f}", f"{trn['knn_top1']:.3f}",
                      f"{fin['loss_dino']:.2f} / {report['ln_k']:.2f}", f"{fin.get('stat_teacher_entropy', 0):.2f}")
    m = report["median"]
    table.add_row("median", f"{m['random']['jf']:.3f}", f"{m['trained']['jf']:.3f}", f"{m['pixels']['jf']:.3f}",
                  f"{m['random']['knn_top1']:.3f}", f"{m['trained']['knn_top1']:.3f}",
                  f"{report['loss_dino_final']:.2f} / {report['ln_k']:.2f}", "")
    console = Console()
    console.print(table)
    for name, ok in report["targets"].items():
        console.print(f"  {'met ' if ok else 'MISSED'}  {name}")
    if "ceiling" in report:
        for name, c in report["ceiling"].items():
            console.print(f"  k-NN probe's supervised ceiling, {name} crops (the same backbone trained with the "
                          f"labels, {c['steps']} steps): held-out top-1 {c['top1']:.3f}, training loss "
                          f"{c['train_loss']:.3f}")


def plot(report: dict, out: Path) -> None:
    """Loss terms and collapse monitors over steps (every seed), and the metric bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("loss_dino", "loss_koleo", "loss_pt", "loss_ft", "loss_pf", "stat_teacher_entropy",
            "stat_teacher_usage", "stat_cls_std")
    fig, axes = plt.subplots(3, 4, figsize=(16, 10))
    for r in report["runs"]:
        recs = [json.loads(x) for x in (out / f"seed{r['seed']}" / "trained" / "metrics.jsonl").read_text().splitlines()
                if x.strip()]
        for ax, key in zip(axes.flat, keys):
            ax.plot([x["step"] for x in recs], [x.get(key, float("nan")) for x in recs], label=f"seed {r['seed']}")
            ax.set_title(key)
    axes.flat[0].axhline(report["ln_k"], ls=":", c="grey", label="ln K")
    axes.flat[0].axhline(0.7 * report["ln_k"], ls="--", c="grey", label="0.7 ln K")
    axes.flat[0].legend()
    m = report["median"]
    for ax, key, title in ((axes.flat[8], "jf", "J&F (median)"), (axes.flat[9], "knn_top1", "k-NN top-1 (median)")):
        names = ["random", "trained"] + (["pixels"] if key == "jf" else [])
        ax.bar(names, [m[n][key] for n in names], color=["grey", "tab:blue", "tab:orange"][:len(names)])
        ax.set_ylim(0, 1)
        ax.set_title(title)
    for ax in axes.flat[10:]:
        ax.axis("off")
    fig.suptitle("learning check on generated data (digit world)")
    fig.tight_layout()
    fig.savefig(out / "learn_check.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=CheckConfig.out)
    ap.add_argument("--config", default=CheckConfig.config)
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--train", type=int, default=CheckConfig.n_train, help="training clips to generate")
    ap.add_argument("--val", type=int, default=CheckConfig.n_val, help="held-out labelled clips (k-NN queries)")
    ap.add_argument("--davis", type=int, default=CheckConfig.n_davis, help="held-out DAVIS-layout videos")
    ap.add_argument("--ceiling-steps", type=int, default=0,
                    help="also train the backbone with the labels this many steps: the k-NN probe's ceiling")
    ap.add_argument("overrides", nargs="*", help="trainer key.sub=value overrides")
    args = ap.parse_args(argv)
    cfg = CheckConfig(out=args.out, config=args.config, seeds=[int(s) for s in args.seeds.split(",")],
                      n_train=args.train, n_val=args.val, n_davis=args.davis, overrides=list(args.overrides),
                      ceiling_steps=args.ceiling_steps)
    log = print
    world, shards = build_data(cfg, log)
    boxes = json.loads((world / "kinetics" / digits.BOXES).read_text())
    data = {"davis": world / "davis",
            "train": object_crops(shards, "train", boxes, cfg.knn_frames, cfg.knn_size),
            "val": object_crops(shards, "val", boxes, cfg.knn_frames, cfg.knn_size)}
    runs = [run_seed(cfg, s, shards, data, log) for s in cfg.seeds]
    from model.checkpoint import load_teacher_backbone
    from tools.config import load_config
    from tools.train import RunConfig

    rc = load_config(RunConfig, cfg.config, cfg.overrides)
    pixels = davis_jf(pixel_features(rc.model.patch_size), world / "davis", Path(cfg.out) / "eval_pixels",
                      cfg.davis_size)
    dim = load_teacher_backbone(Path(cfg.out) / f"seed{cfg.seeds[0]}" / "init" / "teacher.pth").embed_dim
    report = summarise(cfg, runs, pixels, math.log(rc.model.head_n_prototypes), dim)
    if cfg.ceiling_steps > 0:
        report["ceiling"] = ceiling(cfg, shards, boxes, data["val"], log)
    out = Path(cfg.out)
    (out / "learn_check.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out)
    print_report(report)
    log(f"wrote {out / 'learn_check.json'} and {out / 'learn_check.png'}")
    return 0


if __name__ == "__main__":
    np.seterr(divide="ignore", invalid="ignore")
    sys.exit(main())
