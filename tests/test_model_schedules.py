"""Schedules at their key iterations, the EMA teacher, and the optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ModelConfig
from model.optim import apply_schedules, build_adamw, param_groups
from model.schedules import Schedules, scaled_lr
from model.tcore import TCoReStudent
from model.teacher import Teacher

IPE = 100  # iterations per epoch
REF = Schedules(total_iters=400 * IPE, iters_per_epoch=IPE, lr_peak=scaled_lr(0.002, 256), min_lr=1e-6,
                warmup_epochs=20, weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.992,
                final_momentum_teacher=1.0, warmup_teacher_temp=0.04, teacher_temp=0.07,
                warmup_teacher_temp_epochs=30, freeze_last_layer_epochs=1)


def test_lr_rule_warmup_and_cosine():
    assert REF.lr_peak == pytest.approx(0.001)  # 0.002 * sqrt(256 / 1024)
    assert REF.lr(0) == 0.0
    assert REF.lr(10 * IPE) == pytest.approx(0.0005)  # half-way through the warm-up
    assert REF.lr(20 * IPE) == pytest.approx(0.001)  # peak at the end of the warm-up
    assert REF.lr(210 * IPE) == pytest.approx((0.001 + 1e-6) / 2)  # half-way through the cosine
    assert REF.lr(400 * IPE) == pytest.approx(1e-6)
    assert REF.lr(400 * IPE - 1) == pytest.approx(1e-6, rel=1e-3)


def test_weight_decay_momentum_and_teacher_temp():
    assert REF.wd(0) == pytest.approx(0.04)
    assert REF.wd(200 * IPE) == pytest.approx(0.22)
    assert REF.wd(400 * IPE) == pytest.approx(0.4)
    assert REF.momentum(0) == pytest.approx(0.992)
    assert REF.momentum(200 * IPE) == pytest.approx(0.996)
    assert REF.momentum(400 * IPE) == pytest.approx(1.0)
    assert REF.teacher_temp_at(0) == pytest.approx(0.04)
    assert REF.teacher_temp_at(15 * IPE) == pytest.approx(0.055)
    assert REF.teacher_temp_at(30 * IPE) == pytest.approx(0.07)
    assert REF.teacher_temp_at(300 * IPE) == pytest.approx(0.07)


def test_last_layer_frozen_in_first_epoch():
    assert REF.last_layer_lr(IPE - 1) == 0.0 and REF.lr(IPE - 1) > 0
    assert REF.last_layer_lr(IPE) == REF.lr(IPE)


def _student() -> TCoReStudent:
    cfg = ModelConfig(arch="vit_tiny", img_size=32, depth=2, head_n_prototypes=8, head_hidden_dim=8,
                      head_bottleneck_dim=4, pmm_heads=2)
    return TCoReStudent(cfg)


def test_ema_update_exact():
    torch.manual_seed(0)
    s = _student()
    te = Teacher(s.backbone, s.dino_head, 8, 0.9)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    before = [p.clone() for p in te.parameters()]
    students = list(s.backbone.parameters()) + list(s.dino_head.parameters())
    te.ema_update(s.backbone, s.dino_head, 0.75)
    for t0, t1, sp in zip(before, te.parameters(), students):
        assert torch.allclose(t1, 0.75 * t0 + 0.25 * sp)
    snap = [p.clone() for p in te.parameters()]
    te.ema_update(s.backbone, s.dino_head, 1.0)  # final momentum 1: teacher frozen
    assert all(torch.equal(a, b) for a, b in zip(snap, te.parameters()))
    assert not te.training and not any(p.requires_grad for p in te.parameters())


def test_param_groups_multipliers():
    s = _student()
    groups = param_groups(s.named_parameters(), depth=2, layerwise_decay=0.9, patch_embed_lr_mult=0.2,
                          pmm_lr_mult=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(1 for _ in s.parameters())
    d = 2  # lr_mult = 0.9 ** (depth + 1 - layer_id)
    assert by_name["backbone.cls_token"]["lr_mult"] == pytest.approx(0.9 ** (d + 1))
    assert by_name["backbone.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.9 ** (d + 1) * 0.2)
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.9**d)
    assert by_name["backbone.blocks.1.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.9 ** (d - 1))
    assert by_name["backbone.norm.weight"]["lr_mult"] == pytest.approx(1.0)
    assert by_name["dino_head.mlp.0.weight"]["lr_mult"] == pytest.approx(1.0)
    assert by_name["pmm.cross_attn.in_proj_weight"]["lr_mult"] == pytest.approx(0.1)
    for name in ("backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.norm1.weight", "backbone.norm.bias",
                 "backbone.blocks.1.ls1.gamma", "pmm.norm2.weight", "pmm.cross_attn.out_proj.bias"):
        assert by_name[name]["wd_mult"] == 0.0, name
    # the reference's name rule ("<...>.bias") decays nn.MultiheadAttention's in_proj_bias
    for name in ("backbone.blocks.0.attn.qkv.weight", "pmm.cross_attn.in_proj_bias", "pmm.self_attn.in_proj_weight"):
        assert by_name[name]["wd_mult"] == 1.0, name
    assert by_name["dino_head.last_layer.weight_v"]["is_last_layer"]
    assert not by_name["dino_head.mlp.4.weight"]["is_last_layer"]

    opt = build_adamw(groups, fused=False)
    apply_schedules(opt, lr=1.0, last_layer_lr=0.0, wd=0.5)
    for g in opt.param_groups:
        want_lr = 0.0 if g["is_last_layer"] else g["lr_mult"]
        assert math.isclose(g["lr"], want_lr) and math.isclose(g["weight_decay"], 0.5 * g["wd_mult"])
    # the code as released: plain lr everywhere but the PMM (no decay, no x0.2, no frozen prototypes)
    apply_schedules(opt, lr=1.0, last_layer_lr=0.0, wd=0.5, released_lr_groups=True)
    for g in opt.param_groups:
        assert math.isclose(g["lr"], 0.1 if g["is_pmm"] else 1.0)
        assert math.isclose(g["weight_decay"], 0.5 * g["wd_mult"])
