"""CSTP (model/cstp.py): code init, target EMA, loss terms, schedule, training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from model.cstp import (
    CSTPConfig,
    CSTPTarget,
    build,
    export_backbone,
    glorot_init_,
    lr_at,
    make_optimizer,
)
from model.video3d import load_exported
from pipeline.clips import sample_cstp

TINY = CSTPConfig(arch="tiny", proj_hidden=64, proj_dim=32, sync_bn=False)


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    s = sample_cstp(np.full(b, 300), np.full(b, 128), np.full(b, 171), 30.0, np.random.default_rng(0))
    batch = {k: torch.from_numpy(s[k]) for k in ("spatial", "temporal", "pb", "rot")}
    batch["clips"] = torch.randn(b, 2, 3, 8, 16, 16)
    return batch


def test_glorot_init_bounds_include_batchnorm_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 30), nn.BatchNorm1d(30), nn.Conv3d(2, 4, 3))
    glorot_init_(net)
    assert net[0].weight.abs().max() <= math.sqrt(6 / 40)
    assert net[0].weight.abs().max() > 0.8 * math.sqrt(6 / 40)
    bn = net[1].weight
    assert bn.abs().max() <= math.sqrt(6 / 30) and (bn < 0).any()  # the code's init makes some gammas negative
    assert net[2].weight.abs().max() <= math.sqrt(6 / ((2 + 4) * 27))


def test_target_init_and_ema_update():
    torch.manual_seed(0)
    parts = build(TINY, "cpu")
    s, t = list(parts.student.online.parameters()), list(parts.teacher.parameters())
    assert len(s) == len(t) and not any(torch.equal(a, b) for a, b in zip(s, t) if a.dim() > 1)
    assert all(not p.requires_grad for p in t)
    before = [p.clone() for p in t]
    parts.teacher.update(parts.student, 0, 100)
    for a, b, old in zip(s, t, before):
        assert torch.allclose(b, 0.996 * old + 0.004 * a, atol=1e-7)
    copied = build(CSTPConfig(arch="tiny", proj_hidden=64, proj_dim=32, target_init="copy"), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(copied.student.online.parameters(), copied.teacher.parameters()))
    cosine = CSTPTarget(CSTPConfig(arch="tiny", proj_hidden=8, proj_dim=8, momentum_schedule="cosine"))
    assert cosine.momentum_at(0, 10) == pytest.approx(0.996) and cosine.momentum_at(10, 10) == 1.0


def test_terms_heads_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    parts = build(TINY, "cpu")
    batch = _batch()
    assert parts.student.pb_cls[-1].out_features == 5  # code: Linear(512, 5) for 4 labels
    out = parts.student(batch, parts.teacher(batch))
    names = {"loss_byol", "loss_spatial", "loss_temporal", "loss_pb1", "loss_pb2", "loss_rot1", "loss_rot2"}
    assert set(out) == names | {"loss"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], 0.1 * out["loss_byol"] + sum(out[k] for k in names - {"loss_byol"}))
    with pytest.raises(ValueError, match="target's projections"):
        parts.student(batch, None)
    opt = make_optimizer(TINY, parts)
    for g in opt.param_groups:
        g["lr"] = 0.02
    first = out["loss"].item()
    for it in range(8):
        loss = parts.student(batch, parts.teacher(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parts.student.parameters(), TINY.grad_clip)
        opt.step()
        parts.teacher.update(parts.student, it, 100)
    assert parts.student(batch, parts.teacher(batch))["loss"].item() < first - 0.3


def test_paper_head_sizes_and_schedule():
    parts = build(CSTPConfig(arch="tiny", proj_hidden=8, proj_dim=8, pb_classes=4, rot_classes=4), "cpu")
    assert parts.student.rotate_cls[-1].out_features == 4
    cfg = CSTPConfig()
    assert lr_at(cfg, 0, 10, 128) == pytest.approx(1e-5)
    assert lr_at(cfg, 75 * 10 + 9, 10, 128) == pytest.approx(1e-5 + (0.09 - 1e-5) / 2)  # per epoch: epoch 75
    assert lr_at(cfg, 150 * 10, 10, 128) == pytest.approx(0.09)
    assert lr_at(cfg, 225 * 10, 10, 128) == pytest.approx(1e-5 + (0.09 - 1e-5) / 2)
    assert lr_at(cfg, 300 * 10, 10, 256) == pytest.approx(1e-5)
    assert lr_at(cfg, 150 * 10, 10, 256) == pytest.approx(0.18)
    smooth = CSTPConfig(per_epoch_schedule=False)
    assert lr_at(smooth, 755, 10, 128) > lr_at(cfg, 755, 10, 128)


def test_export_is_the_online_backbone():
    parts = build(TINY, "cpu")
    exported = export_backbone(parts.student)
    assert exported["method"] == "cstp"
    net = load_exported(exported).eval()
    x = torch.randn(1, 3, 8, 16, 16)
    assert torch.equal(net(x), parts.student.online.backbone.eval()(x))


def test_bf16_autocast_keeps_float32_losses():
    parts = build(TINY, "cpu")
    batch = _batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = parts.student(batch, parts.teacher(batch))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
