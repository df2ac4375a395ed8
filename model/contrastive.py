"""Contrastive pieces shared by the clip-based methods: gathered negatives, InfoNCE, BYOL, EMA.

Shapes: embeddings are ``[N, D]`` rows of this rank's batch; ``gather_with_grad`` returns the
``[W * N, D]`` concatenation over the W ranks in rank order (rank r's rows are
``r * N : (r + 1) * N``). Every rank must pass the same N.

Distributed convention: each rank's loss is the mean over its own anchors, with the keys (and
negatives) of every rank. The gather's backward sums, over ranks, the gradient each rank's loss
sends to a slice, so after DDP averages the parameter gradients over ranks they equal the
gradients of the single-process loss on the concatenated batch. (DualVar's released
``GatherLayer`` returns only the local loss's gradient for the local slice, and its clip loss
repeats the whole-batch loss on every rank; both differ from the single-process gradient.)

All losses are computed in float32, also inside an autocast region, and return a float32 scalar.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def float32_loss(x: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast so that loss arithmetic stays in float32."""
    return torch.autocast(x.device.type, enabled=False)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        rank, world = rank_and_world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """``[W * N, ...]`` rows of every rank (differentiable); ``x`` itself on a single process."""
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def contrastive_ce(q: Tensor, keys: Tensor, target: Tensor, tau: float, self_col: Tensor | None = None) -> Tensor:
    """InfoNCE: mean over rows of ``-log softmax(q . keys / tau)`` at the target columns.

    ``q [N, D]`` anchors, ``keys [K, D]``; ``target`` is either ``[N]`` column indices (one hard
    positive each) or ``[N, K]`` non-negative weights summing to 1 per row (soft positives).
    ``self_col [N]``: a column to drop from each row's softmax (the anchor itself), or None.
    No normalisation is applied here: pass unit vectors for cosine similarities.
    """
    with float32_loss(q):
        logits = q.float() @ keys.float().t() / tau
        if self_col is not None:
            drop = torch.zeros_like(logits, dtype=torch.bool)
            drop.scatter_(1, self_col[:, None], True)
            logits = logits.masked_fill(drop, float("-inf"))
        logp = F.log_softmax(logits, dim=1)
        if target.dim() == 1:
            return -logp.gather(1, target[:, None]).mean()
        return -(target.float() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(1).mean()


def nt_xent(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent between two views ``z1, z2 [N, D]`` with negatives from every rank.

    Rows are the 2N local embeddings; columns the 2N embeddings of every rank; each row's
    positive is the other view of its sample, its own column is dropped, every other column is a
    negative (2WN - 2 of them). Embeddings are used as given (normalise them for cosine).
    """
    rank, _ = rank_and_world()
    n = z1.shape[0]
    local = torch.cat([z1, z2])
    keys = gather_with_grad(local)
    rows = torch.arange(2 * n, device=z1.device)
    self_col = rank * 2 * n + rows
    pos_col = rank * 2 * n + (rows + n) % (2 * n)
    return contrastive_ce(local, keys, pos_col, tau, self_col)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric BYOL: mean over samples of ``(2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1))``.

    ``p*`` are the online predictions, ``z*`` the target projections (no gradient flows into
    them); all ``[N, D]``. The range is [0, 8].
    """
    with float32_loss(p1):
        def term(p: Tensor, z: Tensor) -> Tensor:
            return 2.0 - 2.0 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)

        return (term(p1, z2) + term(p2, z1)).mean()


@torch.no_grad()
def ema_update_(target: Iterable[Tensor], online: Iterable[Tensor], momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` in place (foreach kernels)."""
    t, s = list(target), [p.detach() for p in online]
    if len(t) != len(s):
        raise ValueError(f"ema_update_: {len(t)} target tensors but {len(s)} online tensors")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


def cosine_momentum(it: int, total: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (1 + cos(pi * it / total)) / 2``."""
    if total <= 0 or it >= total:
        return final
    return final - (final - base) * (1.0 + math.cos(math.pi * it / total)) / 2.0


# ------------------------------------------------ what every clip method hands to the trainer
class MethodParts(NamedTuple):
    """``build(cfg, device)`` of a clip method returns these.

    ``student``: the trained modules; ``student(batch, teacher_out)`` returns float32 losses
    ``{"loss": total, "loss_<term>": ...}`` (wrap it in DDP). ``teacher``: an EMA network or None;
    when present the trainer calls ``teacher_out = teacher(batch)`` (no gradient) before the
    student and ``teacher.update(student, it, total_iters)`` after each optimiser step.
    ``param_groups``: for ``torch.optim.SGD``, each with its ``weight_decay`` and ``lr_mult``.
    """

    student: nn.Module
    teacher: nn.Module | None
    param_groups: list[dict]


def sgd_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """One group of every trainable parameter with ``weight_decay`` (the clip methods' codes
    decay biases and norm weights too)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [{"params": [p for _, p in named], "names": [n for n, _ in named],
             "weight_decay": weight_decay, "lr_mult": 1.0}]


def build_sgd(groups: list[dict], momentum: float) -> torch.optim.SGD:
    """SGD with ``momentum`` over ``groups`` (``lr`` is set per step by the method's ``lr_at``)."""
    return torch.optim.SGD([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=0.0,
                           momentum=momentum)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP / compiled wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
