"""Training metrics: a live rich console line, ``metrics.jsonl``, TensorBoard, and a loss PNG.

Only the process with ``enabled=True`` (rank 0) writes anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOSS_KEYS = ("loss", "loss_dino", "loss_koleo", "loss_pt", "loss_ft", "loss_pf")


def format_line(rec: dict[str, Any]) -> str:
    """One console line from a metrics record."""
    keys = [k for k in LOSS_KEYS if k in rec] + [k for k in rec if k.startswith("loss_") and k not in LOSS_KEYS]
    losses = " ".join(f"{k.removeprefix('loss_')}={rec[k]:.4f}" for k in keys)
    sched = "".join(f" {label} {rec[k]:{fmt}}" for k, label, fmt in
                    (("wd", "wd", ".3f"), ("momentum", "m", ".5f"), ("teacher_temp", "T", ".4f")) if k in rec)
    return (f"step {rec['step']:>7} ep {rec.get('epoch', 0):>4} | {losses} | lr {rec['lr']:.2e}{sched} | "
            f"{rec['samples_per_s']:.1f} samples/s data {100 * rec['data_wait']:.0f}% "
            f"mem {rec.get('memory_gb', 0):.2f} GB")


class MetricsLogger:
    """Writes each record to every sink; ``close`` draws ``loss_curves.png``."""

    def __init__(self, out_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._tb = None
        self._live = None
        if not enabled:
            return
        from rich.console import Console

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.console = Console()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live("", console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def log(self, rec: dict[str, Any]) -> None:
        """Append one record (a flat dict with at least ``step``)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(f"train/{k}", v, rec["step"])
        line = format_line(rec)
        if self._live is not None:
            self._live.update(line)
        else:
            self.console.print(line, highlight=False)

    def info(self, msg: str) -> None:
        """A plain message line (rank 0 only)."""
        if self.enabled:
            self.console.print(msg, highlight=False)

    def close(self) -> None:
        """Stop the live line, flush TensorBoard, draw the loss curves."""
        if not self.enabled:
            return
        if self._live is not None:
            self._live.stop()
        if self._tb is not None:
            self._tb.close()
        plot_losses(self.path, self.out_dir / "loss_curves.png")


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """One panel per loss term from ``metrics.jsonl`` (no-op if it has no records)."""
    if not metrics_path.is_file():
        return
    recs = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not recs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    steps = [r["step"] for r in recs]
    for ax, key in zip(axes.flat, LOSS_KEYS):
        ax.plot(steps, [r.get(key, float("nan")) for r in recs])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
