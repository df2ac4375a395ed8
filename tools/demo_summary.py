"""``python -m tools.demo_summary DIR``: one table of what ``make demo`` produced and where."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _last_metrics(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        return {}, {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return (lines[0], lines[-1]) if lines else ({}, {})


def _prototypes(config: Path) -> int:
    """The run's prototype count K from its saved config (0 when absent)."""
    if not config.is_file():
        return 0
    return int((yaml.safe_load(config.read_text()).get("model") or {}).get("head_n_prototypes", 0))


def rows(shards: Path, demo: Path) -> list[tuple[str, str, str]]:
    """(stage, result, where) for each demo stage that produced output."""
    out = []
    card = _json(shards / "dataset.json")
    if card:
        splits = card["splits"]
        samples = sum(s["samples"] for s in splits.values())
        rejected = sum(s["rejected"] for s in splits.values())
        missing = sum(s["missing"] for s in splits.values())
        mb = sum(s["bytes"] for s in splits.values()) / 2**20
        out.append(("shards", f"{samples} clips in {len(splits)} splits, {mb:.1f} MB; "
                    f"{rejected} rejected, {missing} missing (listed)", str(shards)))
    prof = _json(demo / "profile.json").get("loaders", {})
    if prof:
        rates = ", ".join(f"{k} {v['triplets_per_s']:.0f}" for k, v in prof.items())
        out.append(("loader profile (tcore, triplets/s)", rates, str(demo / "profile.png")))
    first, last = _last_metrics(demo / "train" / "metrics.jsonl")
    if last:
        text = f"{last['step']} steps, loss {first['loss']:.2f} -> {last['loss']:.2f}"
        k = _prototypes(demo / "train" / "config.yaml")
        if k and "loss_dino" in last:
            text += f"; L_DINO {last['loss_dino']:.2f} (ln K = {math.log(k):.2f}: uniform targets)"
        if "stat_cls_std" in last:
            text += f", class-token std {last['stat_cls_std']:.3f} (towards 0: collapse)"
        out.append(("training (tiny ViT, CPU)", text, str(demo / "train")))
    init, trained = (_json(demo / f"eval_davis_{m}" / "summary.json") for m in ("init", "trained"))
    if init and trained:
        out.append(("label propagation, GENERATED digit videos (not comparable to real DAVIS)",
                    f"J&F {init['J&F-Mean']:.3f} at random init -> {trained['J&F-Mean']:.3f} after "
                    f"{last.get('step', 0)} steps (the learning evidence is `make learn-check`)",
                    str(demo / "eval_davis_trained")))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo_summary", description=__doc__)
    p.add_argument("shards", help="the sample shards directory")
    p.add_argument("demo", help="the directory holding the demo's other outputs")
    a = p.parse_args(argv)
    table = Table(title="make demo: what ran and where it went")
    for col in ("stage", "result", "output"):
        table.add_column(col)
    for r in rows(Path(a.shards), Path(a.demo)):
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console.width = 160
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
