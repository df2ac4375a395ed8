"""Outputs of an evaluation run: summary.json, per_object.csv, run.json and the on-screen table
beside the reference numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluation.config import REFERENCE

HEADLINE = {"davis": "J&F-Mean", "vip": "mIoU", "jhmdb": "PCK@0.1"}
COLUMNS = (("DAVIS-17 J&F", "J&F-Mean"), ("VIP mIoU", "mIoU"), ("JHMDB PCK@0.1", "PCK@0.1"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write a CSV with a header row; floats with 6 decimals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])


def summary_table(task: str, summary: dict[str, float], label: str, generated: str | None = None) -> Table:
    """This run's headline metric (percent) in a table with the paper's reference rows.

    On generated data (``generated`` = what made it) the paper's rows are left out: they were
    measured on the real benchmarks and are not comparable.
    """
    if generated:
        table = Table(title=f"label propagation: {task} on GENERATED data ({generated}); "
                            "not comparable to published numbers")
    else:
        table = Table(title=f"label propagation: {task} (paper rows: real benchmarks, the authors' runs)")
    table.add_column("model")
    for title, _ in COLUMNS:
        table.add_column(title, justify="right")
    if not generated:
        for name, ref in REFERENCE.items():
            table.add_row(name, *[f"{ref[key]:.1f}" for _, key in COLUMNS])
    mine = [f"{100 * summary[key]:.1f}" if key in summary else "" for _, key in COLUMNS]
    table.add_row(f"[bold]{label}[/bold]", *mine)
    return table


def detail_table(summary: dict[str, float], timing: dict[str, float]) -> Table:
    """Every summary metric (percent) and the throughput figures."""
    table = Table(title="details")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{100 * v:.2f}")
    for k, v in timing.items():
        table.add_row(k, f"{v:.2f}")
    return table


def print_report(task: str, summary: dict[str, float], timing: dict[str, float], label: str,
                 console: Console | None = None, generated: str | None = None) -> None:
    """Print the reference comparison (none on generated data) and the details."""
    console = console or Console()
    console.print(summary_table(task, summary, label, generated))
    console.print(detail_table(summary, timing))
