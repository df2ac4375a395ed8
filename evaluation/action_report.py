"""The printed result of an action-recognition run, beside the papers' numbers for the same protocol.

Every row names the model, its pre-training, the data and the official split. On generated data
(``generated`` = what made it) the published rows are left out and the title says so: they were
measured on the real datasets. Scores of a features file that does not say where it comes from
are printed as "given features: provenance unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

COLUMNS = {"retrieval": ("R@1", "R@5", "R@10", "R@20", "R@50"), "linear": ("top1", "top5"),
           "finetune": ("top1", "top5")}
DATA_NAMES = {"ucf101": "UCF101", "hmdb51": "HMDB51"}
DUALVAR = "DualVar, R(2+1)D (VCOP's, 14.4 M)"
CSTP = "CSTP, R3D-18 (as reported by a later paper)"
K400 = "K400, 16x112x112"


@dataclass(frozen=True)
class Reference:
    """A published figure (percent) for one dataset and protocol, split 1."""

    model: str
    pretraining: str
    dataset: str
    protocol: str
    metrics: dict[str, float] = field(default_factory=dict)


REFERENCES = (
    Reference(DUALVAR, K400, "ucf101", "finetune", {"top1": 82.0}),
    Reference(DUALVAR, K400, "hmdb51", "finetune", {"top1": 51.2}),
    # the paper's table; its abstract says 46.1 top-1
    Reference(DUALVAR, K400, "ucf101", "retrieval", {"R@1": 46.7, "R@5": 63.1, "R@10": 69.7, "R@20": 78.0, "R@50": 87.8}),
    Reference(CSTP, K400, "ucf101", "finetune", {"top1": 70.5}),
    Reference(CSTP, K400, "hmdb51", "finetune", {"top1": 34.4}),
)


def data_label(dataset: str, generated: str | None, known: bool = True) -> str:
    """How the data of this run is named (the table's data column and summary.json's ``data``)."""
    name = DATA_NAMES.get(dataset, dataset)
    if not known:
        return f"{name}? (given features: provenance unknown)"
    return f"{name}-layout GENERATED data: not comparable" if generated else name


def result_table(dataset: str, protocol: str, split: int, summary: dict[str, float], model: str,
                 pretraining: str, data: str, generated: str | None = None) -> Table:
    """This run's metrics (percent) under the published rows for the same dataset and protocol
    (none on generated data)."""
    titles = {"retrieval": "nearest-neighbour retrieval (test queries, train gallery)",
              "linear": "linear probe on frozen features, top-1 / top-5",
              "finetune": "fine-tuning, 10-clip test, top-1 / top-5"}
    title = f"{DATA_NAMES.get(dataset, dataset)}: {titles[protocol]}"
    if generated:
        title += f"\non GENERATED data ({generated}); not comparable to published numbers"
    table = Table(title=title)
    for col in ("model", "pre-training", "data", "split"):
        table.add_column(col)
    cols = COLUMNS[protocol]
    for col in cols:
        table.add_column(col, justify="right")
    refs = [] if generated else [r for r in REFERENCES if r.dataset == dataset and r.protocol == protocol]
    for r in refs:
        table.add_row(r.model, r.pretraining, DATA_NAMES[dataset], "1",
                      *[f"{r.metrics[c]:.1f}" if c in r.metrics else "–" for c in cols])
    mine = [f"{100 * summary[c]:.1f}" if summary.get(c) is not None else "–" for c in cols]
    table.add_row(f"[bold]{model}[/bold]", pretraining, data, str(split), *mine)
    if not refs and not generated:
        table.caption = "no published figure for this dataset and protocol among the reference methods"
    elif refs and split != 1:
        table.caption = "the published figures are for split 1"
    return table


def print_result(dataset: str, protocol: str, split: int, summary: dict[str, float], model: str,
                 pretraining: str, data: str, generated: str | None = None, console: Console | None = None) -> None:
    """Print the comparison table and every summary value."""
    console = console or Console()
    console.print(result_table(dataset, protocol, split, summary, model, pretraining, data, generated))
    details = Table(title="details")
    details.add_column("key")
    details.add_column("value", justify="right")
    for k, v in summary.items():
        details.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(details)
