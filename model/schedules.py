"""Per-iteration schedules: learning rate, weight decay, teacher momentum and temperature.

All are pure functions of the iteration (so a resumed run recomputes them exactly). An "epoch"
here is ``iters_per_epoch`` iterations, stated in the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The reference's lr rule: ``base_lr * sqrt(total_batch / 1024)``."""
    return base_lr * math.sqrt(total_batch / 1024)


def cosine(it: int, total: int, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * it / total)) / 2``, held at ``end`` after ``total``."""
    if total <= 0 or it >= total:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * it / total))


def warmup_cosine(it: int, total: int, warmup: int, peak: float, final: float, start: float = 0.0) -> float:
    """Linear ``start -> peak`` over ``warmup`` iterations, then cosine ``peak -> final``."""
    if it < warmup:
        return start + (peak - start) * it / warmup
    return cosine(it - warmup, total - warmup, peak, final)


@dataclass(frozen=True)
class Schedules:
    """Everything that changes per iteration, computed from the run's totals."""

    total_iters: int
    iters_per_epoch: int
    lr_peak: float  # base_lr * sqrt(total batch / 1024)
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    weight_decay_end: float
    momentum_teacher: float
    final_momentum_teacher: float
    warmup_teacher_temp: float
    teacher_temp: float
    warmup_teacher_temp_epochs: float
    freeze_last_layer_epochs: float

    def lr(self, it: int) -> float:
        """Learning rate: linear warm-up from 0, then cosine to ``min_lr``."""
        warm = int(self.warmup_epochs * self.iters_per_epoch)
        return warmup_cosine(it, self.total_iters, warm, self.lr_peak, self.min_lr)

    def last_layer_lr(self, it: int) -> float:
        """Learning rate of the prototype layer: 0 while frozen, else ``lr``."""
        if it < int(self.freeze_last_layer_epochs * self.iters_per_epoch):
            return 0.0
        return self.lr(it)

    def wd(self, it: int) -> float:
        """Weight decay: cosine from ``weight_decay`` to ``weight_decay_end``."""
        return cosine(it, self.total_iters, self.weight_decay, self.weight_decay_end)

    def momentum(self, it: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum_teacher`` to ``final_momentum_teacher``."""
        return cosine(it, self.total_iters, self.momentum_teacher, self.final_momentum_teacher)

    def teacher_temp_at(self, it: int) -> float:
        """Teacher temperature: linear warm-up, then constant."""
        warm = int(self.warmup_teacher_temp_epochs * self.iters_per_epoch)
        if it < warm:
            return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * it / warm
        return self.teacher_temp

    def at(self, it: int) -> dict[str, float]:
        """All values at iteration ``it``."""
        return {
            "lr": self.lr(it),
            "last_layer_lr": self.last_layer_lr(it),
            "wd": self.wd(it),
            "momentum": self.momentum(it),
            "teacher_temp": self.teacher_temp_at(it),
        }
