"""Local-global method (model/localglobal.py): region geometry, soft targets, switches, training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.localglobal import (
    LocalGlobalConfig,
    build,
    export_backbone,
    grad_reverse,
    grid_regions,
    lr_at,
    make_optimizer,
    region_targets,
    roi_pool_3d,
    st_iou,
)
from pipeline.clips import sample_localglobal

SMALL = dict(arch="tiny", proj_hidden=32, proj_dim=16, mi_hidden=16, order_hidden=32, sync_bn=False)
TERMS = {"loss_instance", "loss_region", "loss_mi", "loss_order"}


def test_st_iou_known_values():
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
    half_t = torch.tensor([[0.5, 1.5, 0.0, 0.0, 1.0, 1.0]])  # same box, half the time overlaps
    apart = torch.tensor([[0.0, 1.0, 2.0, 0.0, 3.0, 1.0]])
    quarter = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.5, 0.5]])
    assert st_iou(a, a).item() == pytest.approx(1.0)
    assert st_iou(a, half_t).item() == pytest.approx(1 / 3)
    assert st_iou(a, apart).item() == 0.0
    assert st_iou(a, quarter).item() == pytest.approx(0.25)
    assert st_iou(a, torch.cat([a, apart, quarter])).shape == (1, 3)


def test_roi_pool_3d_reads_the_right_cells():
    # feature map [1, 1, t=2, h=4, w=4]: each (t, 2x2 block) cell holds its own constant
    vals = torch.arange(8, dtype=torch.float32).view(2, 2, 2)  # [t, hb, wb]
    fmap = vals.repeat_interleave(2, 1).repeat_interleave(2, 2)[None, None]
    cells = grid_regions((2, 2, 2))  # order t, then y, then x
    pooled = roi_pool_3d(fmap, cells[None], 2)
    assert torch.allclose(pooled.view(-1), vals.view(-1))
    whole = torch.tensor([[[0.0, 1.0, 0.0, 0.0, 1.0, 1.0]]])
    assert roi_pool_3d(fmap, whole, 2).item() == pytest.approx(vals.mean().item())
    first_time_half = torch.tensor([[[0.0, 0.25, 0.5, 0.0, 1.0, 0.5]]])  # t cell 0, top-right block
    assert roi_pool_3d(fmap, first_time_half, 2).item() == pytest.approx(1.0)


def test_region_targets_weight_own_video_by_iou():
    local = torch.tensor([[[0.0, 0.5, 0.0, 0.0, 0.5, 0.5]], [[0.5, 1.0, 0.5, 0.5, 1.0, 1.0]]])  # B=2, M=1
    regions = torch.cat([local, grid_regions((2, 2, 2)).expand(2, -1, -1)], 1)  # R = 9
    target = region_targets(local, regions, rank=1, world=2)
    assert target.shape == (2, 2 * 2 * 9)
    assert torch.allclose(target.sum(1), torch.ones(2))
    own = target.view(2, 4, 9)
    assert own[0, 2].sum() == pytest.approx(1.0) and own[1, 3].sum() == pytest.approx(1.0)  # rank 1 -> videos 2, 3
    # the local window equals one grid cell: half on itself, half on that cell, 0 on the others
    assert own[0, 2, 0].item() == pytest.approx(0.5) and own[0, 2, 1].item() == pytest.approx(0.5)
    assert own[1, 3, 0].item() == pytest.approx(0.5) and own[1, 3, 8].item() == pytest.approx(0.5)


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))


def _batch(b: int = 4, m: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    s = sample_localglobal(np.full(b, 200), np.full(b, 128), np.full(b, 171), 25.0, np.random.default_rng(0))
    return {"global": torch.randn(b, 3, 8, 32, 32), "local": torch.randn(b, m, 3, 8, 16, 16),
            "local_boxes": torch.from_numpy(s["local_boxes"]), "local_times": torch.from_numpy(s["local_times"]),
            "order": torch.from_numpy(s["order"])}


def test_all_components_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = LocalGlobalConfig(**SMALL)
    parts = build(cfg, "cpu")
    assert parts.teacher is None
    batch = _batch()
    out = parts.student(batch)
    assert set(out) == TERMS | {"loss"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["loss_instance"] + out["loss_region"] + 0.1 * out["loss_mi"]
                          + 0.5 * out["loss_order"])
    opt = make_optimizer(cfg, parts)
    for g in opt.param_groups:
        g["lr"] = 0.02
    first = out["loss"].item()
    for _ in range(8):
        loss = parts.student(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts.student(batch)["loss"].item() < first - 0.5


@pytest.mark.parametrize("off", sorted(TERMS))
def test_each_component_switches_off(off):
    weight = {"loss_instance": "instance_weight", "loss_region": "region_weight", "loss_mi": "mi_weight",
              "loss_order": "order_weight"}[off]
    parts = build(LocalGlobalConfig(**SMALL, **{weight: 0.0}), "cpu")
    out = parts.student(_batch(b=2))
    assert set(out) == (TERMS - {off}) | {"loss"}
    out["loss"].backward()
    unused = [n for n, p in parts.student.named_parameters() if p.grad is None]
    assert unused == []  # a disabled component leaves no idle parameters (DDP-friendly)


def test_bad_inputs_and_schedule():
    parts = build(LocalGlobalConfig(**SMALL), "cpu")
    with pytest.raises(ValueError, match=r"\[B, 3, 3, F, H, W\]"):
        parts.student({**_batch(b=2), "local": torch.zeros(2, 2, 3, 8, 16, 16)})
    with pytest.raises(ValueError, match=">= 2 videos per rank"):
        parts.student(_batch(b=1))
    with pytest.raises(ValueError, match="num_local must be >= 2"):
        LocalGlobalConfig(num_local=1).validate()
    cfg = LocalGlobalConfig()
    assert lr_at(cfg, 0, 10, 64) == 0.0 and lr_at(cfg, 50, 10, 64) == pytest.approx(0.05)
    assert lr_at(cfg, 2000, 10, 128) == pytest.approx(0.0, abs=1e-12)
    assert export_backbone(parts.student)["method"] == "localglobal"


def test_bf16_autocast_keeps_float32_losses():
    parts = build(LocalGlobalConfig(**SMALL), "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = parts.student(_batch(b=2))
    assert set(out) == TERMS | {"loss"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
