"""The five T-CoRe loss terms and the teacher's centred targets.

Shapes: logits ``[..., K]`` (K prototypes). Class-token terms take ``[V, B, K]`` (V views);
patch terms take ``[M, K]`` over the fixed slot list of ``model/masks.py`` with per-slot
weights ``[M]``. Every function returns a float32 scalar and is computed in float32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def centred_softmax(logits: Tensor, centre: Tensor, temp: float) -> Tensor:
    """Teacher targets ``softmax((logits - centre) / temp)`` over the last dimension."""
    return F.softmax((logits.float() - centre) / temp, dim=-1)


def sinkhorn_knopp(logits: Tensor, temp: float, weight: Tensor | None = None, iterations: int = 3) -> Tensor:
    """Teacher targets by Sinkhorn-Knopp (DINOv2's alternative to centring): ``[N, K]`` rows summing to 1.

    Starting from ``exp(logits / temp)``, alternately make every prototype's total mass over the
    (global, all ranks) batch equal and every row's mass 1, ``iterations`` times. ``weight [N]``
    (0/1) drops rows from the batch (padding slots); their targets are returned as zeros.
    """
    with _no_autocast(logits):
        x = logits.float() / temp
        q = torch.exp(x - _all_reduce_max(x.max()))  # one shift for all rows keeps the same Q
        if weight is not None:
            q = q * weight.float()[:, None]
        rows = _all_reduce_sum(q.new_full((1,), float(q.shape[0])) if weight is None else weight.float().sum().view(1))
        k = q.shape[1]
        for _ in range(iterations):
            q = q / (_all_reduce_sum(q.sum(0, keepdim=True)) * k).clamp(min=1e-30)  # each prototype: 1/K
            q = q / (q.sum(1, keepdim=True) * rows).clamp(min=1e-30)  # each row: 1/rows
        return q * rows


def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _all_reduce_max(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _no_autocast(x: Tensor):
    """Loss arithmetic stays in float32 even inside an autocast region."""
    return torch.autocast(x.device.type, enabled=False)


def dino_loss(student_global: Tensor, student_local: Tensor | None, teacher: Tensor, student_temp: float) -> Tensor:
    """Cross-entropy over all (student view, teacher view) pairs, averaged over pairs and images.

    ``student_global [G, B, K]`` is paired with every *other* teacher view ``teacher [G, B, K]``;
    ``student_local [L, B, K]`` with every teacher view.
    """
    with _no_autocast(teacher):
        teacher = teacher.float()
        g = teacher.shape[0]
        lsm = F.log_softmax(student_global.float() / student_temp, dim=-1)
        ce = -(lsm[:, None] * teacher[None]).sum(-1).mean(-1)  # [G, G]: (student view, teacher view)
        total = ce.sum() - ce.diagonal().sum()
        pairs = g * (g - 1)
        if student_local is not None and student_local.shape[0] > 0:
            lsm_l = F.log_softmax(student_local.float() / student_temp, dim=-1)
            total = total - (lsm_l[:, None] * teacher[None]).sum(-1).mean(-1).sum()
            pairs += student_local.shape[0] * g
        return total / max(pairs, 1)


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy estimate ``-mean_i log ||x_i - x_nn(i)||`` on L2-normalised rows.

    ``x [B, D]``; zero when ``B < 2``.
    """
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    with _no_autocast(x):
        x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)  # never pick yourself
        nn_idx = dots.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nn_idx], eps=eps)
        return -torch.log(dist + eps).mean()


def masked_patch_loss(student: Tensor, teacher: Tensor, weight: Tensor, n_crops: int, student_temp: float) -> Tensor:
    """Cross-entropy at masked positions: ``sum_m weight_m * CE_m / n_crops``.

    ``student [M, K]`` logits (head on PMM output), ``teacher [M, K]`` targets, ``weight [M]``
    = 1 / (masked patches in the slot's crop), 0 for padding slots; ``n_crops`` = number of
    global crops (masked or not).
    """
    with _no_autocast(student):
        ce = -(teacher.float() * F.log_softmax(student.float() / student_temp, dim=-1)).sum(-1)
        return (ce * weight.float()).sum() / n_crops


def past_future_loss(past: Tensor, future: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error between the past- and future-based logits ``[M, K]`` at valid slots."""
    with _no_autocast(past):
        per_slot = (past.float() - future.float()).pow(2).mean(-1)
        return (per_slot * valid).sum() / valid.sum().clamp(min=1.0)
