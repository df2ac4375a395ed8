"""The training loop of the linear probe and of fine-tuning: SGD with step decay, ``metrics.jsonl``,
a progress bar, and checkpoints from which a run resumes exactly.

Exact resume: batches are a pure function of (seed, epoch, position) (see ``clip_source``), the
torch RNG states are saved with the weights and the optimizer, and a run restarted after any
checkpoint skips the batches already done, so its losses equal an uninterrupted run's (on a GPU,
up to its non-deterministic kernels).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn


@dataclass(frozen=True)
class LoopSpec:
    """What the loop runs (taken from a ProbeConfig or FinetuneConfig by its caller)."""

    epochs: int
    steps_per_epoch: int
    lr: float
    milestones: tuple[int, ...]
    max_steps: int = 0  # stop after this many steps (a checkpoint is written); 0: all epochs
    checkpoint_every: int = 0  # steps; a checkpoint is also written at every epoch end
    keep: int = 2
    log_every: int = 1
    eval_every: int = 0  # epochs between evaluations (and after the last); 0: none
    bf16: bool = False


@dataclass
class LoopState:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0  # batches done in ``epoch``
    step: int = 0
    best: float = -1.0  # best evaluation so far, and its epoch
    best_epoch: int = -1
    last_eval: float = -1.0


def lr_at(base: float, epoch: int, milestones: Iterable[int]) -> float:
    """Step decay: ``base`` x 0.1 for every milestone epoch reached."""
    return base * 0.1 ** sum(epoch >= m for m in milestones)


class RunDir:
    """A run's output folder: ``checkpoints/ckpt_<step>.pth`` and ``metrics.jsonl``.

    ``signature`` (the settings that change the result) is stored in each checkpoint; resuming
    from checkpoints of another signature is refused.
    """

    def __init__(self, out: str | Path, signature: dict[str, Any], console: Console | None = None) -> None:
        self.out = Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics = self.out / "metrics.jsonl"
        self.signature = json.loads(json.dumps(signature))
        self.console = console or Console()

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> LoopState:
        """Load the newest readable checkpoint into model and optimizer; a fresh state without one."""
        # imported here, not at the top: model.checkpoint pulls in timm (seconds of start-up)
        from model.checkpoint import list_checkpoints

        for path in reversed(list_checkpoints(self.ckpt_dir)):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
                state = LoopState(**ckpt["state"])
            except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint: fall back to the previous one
                self.console.print(f"checkpoint {path} is unreadable ({type(exc).__name__}); trying the previous one")
                continue
            if ckpt.get("signature") != self.signature:
                diff = sorted(k for k in set(self.signature) | set(ckpt.get("signature", {}))
                              if self.signature.get(k) != ckpt.get("signature", {}).get(k))
                raise ValueError(f"{self.ckpt_dir}: checkpoints of a run with other settings (differ in: "
                                 f"{', '.join(diff)}); use a new OUT or remove them")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            if ckpt.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            self._truncate(state)
            self.console.print(f"resuming from {path.name} (step {state.step}, epoch {state.epoch})")
            return state
        self.metrics.unlink(missing_ok=True)
        return LoopState()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: LoopState, keep: int) -> None:
        """Atomically write a checkpoint at ``state.step``, keeping the newest ``keep``."""
        from model.checkpoint import save_checkpoint

        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state),
                         "rng": torch.get_rng_state(), "cuda_rng": cuda_rng, "signature": self.signature},
                        self.ckpt_dir, state.step, keep)

    def log(self, rec: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def _truncate(self, state: LoopState) -> None:
        """Drop records logged after the checkpoint being resumed (they will be logged again): later
        steps, and an evaluation at its step when it was taken before the epoch ended."""
        if self.metrics.is_file():
            recs = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
            keep = [r for r in recs if r["step"] < state.step
                    or (r["step"] == state.step and ("test_top1" not in r or state.batch == 0))]
            self.metrics.write_text("".join(json.dumps(r) + "\n" for r in keep))


def _progress(console: Console, title: str) -> Progress:
    return Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal, refresh_per_second=4)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer,
        batches: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]], spec: LoopSpec, run: RunDir,
        device: torch.device, evaluate: Callable[[], float] | None = None, title: str = "training") -> LoopState:
    """Train ``model`` with cross-entropy on ``batches(epoch, skip)``; returns the final state
    (stopped early at ``spec.max_steps`` with a checkpoint, or after the last epoch)."""
    state = run.resume(model, optimizer)
    total = spec.epochs * spec.steps_per_epoch
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if spec.bf16 and device.type == "cuda" else contextlib.nullcontext()
    with _progress(run.console, title) as bar:
        task = bar.add_task(title, total=total, completed=state.step, info="")
        while state.epoch < spec.epochs:
            if spec.max_steps and state.step >= spec.max_steps:
                break
            lr = lr_at(spec.lr, state.epoch, spec.milestones)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            tick = time.perf_counter()
            for x, y in batches(state.epoch, state.batch):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with amp:
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state.batch += 1
                state.step += 1
                if state.step % spec.log_every == 0:
                    now = time.perf_counter()
                    rec = {"step": state.step, "epoch": state.epoch, "loss": loss.item(), "lr": lr,
                           "acc": (logits.argmax(1) == y).float().mean().item(),
                           "samples_per_s": len(y) * spec.log_every / max(now - tick, 1e-9)}
                    tick = now
                    run.log(rec)
                    bar.update(task, completed=state.step, info=f"loss {rec['loss']:.4f} lr {lr:.2g}")
                if spec.max_steps and state.step >= spec.max_steps:
                    run.save(model, optimizer, state, spec.keep)
                    return state
                if spec.checkpoint_every and state.step % spec.checkpoint_every == 0:
                    run.save(model, optimizer, state, spec.keep)
            epoch, state.epoch, state.batch = state.epoch, state.epoch + 1, 0
            if evaluate is not None and spec.eval_every and (epoch % spec.eval_every == 0 or state.epoch == spec.epochs):
                state.last_eval = evaluate()
                if state.last_eval >= state.best:  # CoCLR keeps the latest of equal bests
                    state.best, state.best_epoch = state.last_eval, epoch
                run.log({"step": state.step, "epoch": epoch, "test_top1": state.last_eval})
            run.save(model, optimizer, state, spec.keep)
            if not run.console.is_terminal:
                run.console.print(f"{title}: epoch {epoch + 1}/{spec.epochs}, step {state.step}/{total}")
    return state
