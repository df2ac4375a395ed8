"""Shared contrastive pieces (model/contrastive.py): known values, and gathered negatives across two
gloo processes equal to the single-process loss on the concatenated batch."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.contrastive import (
    byol_loss,
    contrastive_ce,
    cosine_momentum,
    ema_update_,
    gather_with_grad,
    nt_xent,
    rank_and_world,
)
from model.localglobal import region_targets
from model.video3d import convert_sync_bn, tiny

N, D, M, R = 3, 8, 2, 5  # videos per rank, embedding size, local clips per video, regions per video


def test_nt_xent_known_value():
    eye = torch.eye(D)
    z = eye[:2]  # two samples, both views identical and orthogonal to the other sample
    tau = 0.5
    expected = math.log(1 + 2 * math.exp(-1 / tau))  # positive 1/tau against two negatives at 0
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent(z, z.flip(0), tau).item() > 1.0  # the "positives" are now the negatives


def test_soft_targets_reduce_to_hard_ones_and_ignore_the_dropped_column():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, D), dim=1), F.normalize(torch.randn(6, D), dim=1)
    target = torch.tensor([1, 2, 3, 4])
    soft = F.one_hot(target, 6).float()
    self_col = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(contrastive_ce(q, k, target, 0.2, self_col), contrastive_ce(q, k, soft, 0.2, self_col))
    assert torch.isfinite(contrastive_ce(q, k, soft, 0.2, self_col))


def test_byol_loss_range_and_stop_gradient():
    p = torch.randn(5, D, requires_grad=True)
    z = torch.randn(5, D, requires_grad=True)
    assert byol_loss(p, p, p.detach(), p.detach()).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, p, -p.detach(), -p.detach()).item() == pytest.approx(8.0, abs=1e-5)
    byol_loss(p, p, z, z).backward()
    assert p.grad is not None and z.grad is None


def test_ema_update_and_momentum_schedule():
    t, s = [torch.ones(3), torch.zeros(2)], [torch.full((3,), 3.0), torch.ones(2)]
    ema_update_(t, s, 0.75)
    assert torch.allclose(t[0], torch.full((3,), 1.5)) and torch.allclose(t[1], torch.full((2,), 0.25))
    with pytest.raises(ValueError, match="2 target tensors but 1"):
        ema_update_(t, s[:1], 0.5)
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == 1.0


def _full_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = 2
    regions = torch.rand(w * N, M + R, 6, generator=g)
    lo, hi = torch.minimum(regions[..., ::2], regions[..., 1::2]), torch.maximum(regions[..., ::2], regions[..., 1::2])
    regions = torch.stack([lo[..., 0], hi[..., 0] + 0.1, lo[..., 1], lo[..., 2], hi[..., 1] + 0.1, hi[..., 2] + 0.1], -1)
    return {"z1": torch.randn(w * N, D, generator=g), "z2": torch.randn(w * N, D, generator=g),
            "q": torch.randn(w * N * M, D, generator=g), "k": torch.randn(w * N * R, D, generator=g),
            "regions": regions}


def _losses(part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NT-Xent and a soft region contrast on this rank's part; returns the loss and leaf grads."""
    leaves = {k: part[k].clone().requires_grad_(True) for k in ("z1", "z2", "q", "k")}
    z1, z2 = F.normalize(leaves["z1"], dim=1), F.normalize(leaves["z2"], dim=1)
    q, k = F.normalize(leaves["q"], dim=1), F.normalize(leaves["k"], dim=1)
    rank, world = rank_and_world()
    local_regions = part["regions"][:, :M]
    target = region_targets(local_regions, part["regions"][:, M:], rank, world)
    loss = nt_xent(z1, z2, 0.2) + contrastive_ce(q, gather_with_grad(k), target, 0.1)
    loss.backward()
    return loss.detach(), {n: v.grad for n, v in leaves.items()}


def _worker(rank: int, store: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    full = _full_batch()
    part = {"z1": full["z1"][rank * N:(rank + 1) * N], "z2": full["z2"][rank * N:(rank + 1) * N],
            "q": full["q"][rank * N * M:(rank + 1) * N * M], "k": full["k"][rank * N * R:(rank + 1) * N * R],
            "regions": full["regions"][rank * N:(rank + 1) * N]}
    loss, grads = _losses(part)
    synced = convert_sync_bn(tiny())
    torch.save({"loss": loss, "grads": grads,
                "sync_bn": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())}, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~25 s on 2 busy cores
def test_gathered_losses_and_gradients_equal_the_single_process_batch(tmp_path):
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    loss, grads = _losses(_full_batch())
    # each rank's loss is the mean over its anchors: the mean over ranks is the batch loss
    assert ((ranks[0]["loss"] + ranks[1]["loss"]) / 2).item() == pytest.approx(loss.item(), rel=1e-5)
    sizes = {"z1": N, "z2": N, "q": N * M, "k": N * R}
    for name, n in sizes.items():
        # DDP averages over the 2 ranks: (rank grad) / 2 must be the single-process gradient
        for r in range(2):
            assert torch.allclose(ranks[r]["grads"][name] / 2, grads[name][r * n:(r + 1) * n], atol=1e-6), (name, r)
    assert ranks[0]["sync_bn"] > 0  # BatchNorm converted under a 2-rank group
