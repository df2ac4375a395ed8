"""Linear probe on frozen, cached video features.

Shapes: features ``[N, D]`` float32, labels ``[N]`` int64, logits ``[N, C]``.

The head is CoCLR's ``LinearClassifier`` as ``main_classifier.py --train_what last`` builds it:
the feature L2-normalised, then ``BatchNorm1d`` (affine, weight 1 / bias 0 at start, trained),
then a linear layer (weights N(0, 0.01), bias 0), no dropout (``bn_affine=false``: a BN without
its affine part). It is trained on the cached
10-clip features as ``eval/feature_linear_probe.py`` trains it: SGD momentum 0.9, lr 1.0,
weight decay 1e-3, batch 1024, 100 epochs, lr x0.1 at epochs 60 and 80, test accuracy every 5
epochs. CoCLR reports the best of those test accuracies; ``top1`` here is the final epoch's and
``best_top1`` / ``best_epoch`` is CoCLR's figure (chosen on the test split).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.action_config import ProbeConfig
from evaluation.train_loop import LoopSpec, RunDir, fit


class LinearProbe(nn.Module):
    """[L2 normalisation] -> [BatchNorm1d] -> Linear."""

    def __init__(self, dim: int, num_classes: int, normalize: bool = True, bn: bool = True,
                 bn_affine: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.bn = nn.BatchNorm1d(dim, affine=bn_affine) if bn else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = F.normalize(x, p=2, dim=1)
        return self.fc(self.bn(x))


def feature_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                    drop_single: bool) -> tuple[Callable[[int, int], Iterator], int]:
    """``batches(epoch, skip)`` over a fresh permutation per (seed, epoch), and batches per epoch.
    The last batch is kept (as CoCLR does) unless it holds a single sample and BN would fail on it."""
    n = len(feats)
    steps = math.ceil(n / batch_size)
    if drop_single and n % batch_size == 1 and steps > 1:
        steps -= 1

    def batches(epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for b in range(skip, steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield feats[idx], labels[idx]

    return batches, steps


@torch.no_grad()
def probabilities(model: nn.Module, feats: torch.Tensor, device: torch.device, chunk: int = 4096) -> np.ndarray:
    """Softmax outputs ``[M, C]`` of the model in eval mode."""
    was_training = model.training
    model.eval()
    out = [F.softmax(model(feats[i:i + chunk].to(device)).float(), dim=1).cpu() for i in range(0, len(feats), chunk)]
    model.train(was_training)
    return torch.cat(out).numpy()


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k most probable."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, run with one intra-op thread: the probe's operations are a few microseconds
    each, and thread synchronisation costs more than it saves (hundreds of times more on a busy
    machine)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
                num_classes: int, cfg: ProbeConfig, run: RunDir, device: torch.device) -> tuple[dict, np.ndarray]:
    """Train (or resume) the probe; returns the summary (fractions) and the test probabilities."""
    x_train = torch.as_tensor(train_feats, dtype=torch.float32)
    y_train = torch.as_tensor(train_labels, dtype=torch.int64)
    x_test = torch.as_tensor(test_feats, dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = LinearProbe(x_train.shape[1], num_classes, cfg.normalize, cfg.bn, cfg.bn_affine).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batches, steps = feature_batches(x_train, y_train, cfg.batch_size, cfg.seed, drop_single=cfg.bn)
    spec = LoopSpec(epochs=cfg.epochs, steps_per_epoch=steps, lr=cfg.lr, milestones=tuple(cfg.milestones),
                    max_steps=cfg.max_steps, keep=2, log_every=1, eval_every=cfg.eval_every)

    def evaluate() -> float:
        return topk_accuracy(probabilities(model, x_test, device), test_labels, 1)

    with one_cpu_thread(device):
        state = fit(model, optimizer, batches, spec, run, device, evaluate, title="linear probe")
        probs = probabilities(model, x_test, device)
    summary = {"top1": topk_accuracy(probs, test_labels, 1), "top5": topk_accuracy(probs, test_labels, 5),
               "best_top1": state.best if state.best_epoch >= 0 else None, "best_epoch": state.best_epoch,
               "epochs_done": state.epoch, "steps": state.step, "complete": state.epoch >= cfg.epochs}
    return summary, probs
