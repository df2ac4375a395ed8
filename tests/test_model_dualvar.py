"""DualVar (model/dualvar.py): segment shuffling undone, losses on hand-built tensors, training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.contrastive import nt_xent
from model.dualvar import (
    DualVarConfig,
    build,
    export_backbone,
    lr_at,
    make_optimizer,
    restore_segments,
    shuffle_rank_loss,
    shuffle_segments,
)
from model.video3d import load_exported
from pipeline.clips import sample_dualvar

TINY = DualVarConfig(arch="tiny", sync_bn=False)


def test_shuffle_moves_segments_and_restore_undoes_it():
    clip = torch.arange(2 * 3 * 8 * 2 * 2, dtype=torch.float32).view(2, 3, 8, 2, 2)
    perm = torch.tensor([[1, 0], [0, 1]])
    out = shuffle_segments(clip, perm)
    assert torch.equal(out[0, :, :4], clip[0, :, 4:]) and torch.equal(out[0, :, 4:], clip[0, :, :4])
    assert torch.equal(out[1], clip[1])
    # embeddings of the shuffled clip's segments, put back in the original order
    emb = torch.randn(2, 3, 5)
    perm3 = torch.tensor([[2, 0, 1], [1, 2, 0]])
    shuffled = torch.stack([emb[b, perm3[b]] for b in range(2)])  # segment k holds original perm[k]
    assert torch.equal(restore_segments(shuffled, perm3), emb)
    with pytest.raises(ValueError, match="7 frames do not split into 2"):
        shuffle_segments(torch.zeros(1, 3, 7, 2, 2), perm[:1])


def test_shuffle_rank_loss_known_values():
    e = torch.eye(4)[None, :2]  # q_1, q_2 orthonormal
    aligned = shuffle_rank_loss(e, e.clone(), 0.05, 5.0)
    assert aligned.item() == pytest.approx(F.softplus(torch.tensor(-20.0)).item(), rel=1e-4)  # diff -1 / 0.05
    swapped = shuffle_rank_loss(e, e.flip(1), 0.05, 5.0)  # p not put back: every positive is a competitor
    assert swapped.item() == pytest.approx((math.log(2) + F.softplus(torch.tensor(5.0)).item()) / 2, rel=1e-5)


def test_temporal_coherent_similarity_is_the_mean_over_segment_pairs():
    torch.manual_seed(0)
    s1, s2 = F.normalize(torch.randn(3, 2, 6), dim=-1), F.normalize(torch.randn(3, 2, 6), dim=-1)
    tau = 0.07
    loss = nt_xent(s1.mean(1), s2.mean(1), tau)
    # reference: similarity of clips a, b = mean over (i, j) of <seg_i(a), seg_j(b)>, SimCLR over 2B clips
    segs = torch.cat([s1, s2])
    sim = torch.stack([torch.stack([(segs[a] @ segs[b].t()).mean() for b in range(6)]) for a in range(6)])
    ref = 0.0
    for a in range(6):
        pos = (a + 3) % 6
        others = [sim[a, b] / tau for b in range(6) if b != a]
        ref += -(sim[a, pos] / tau - torch.logsumexp(torch.stack(others), 0))
    assert loss.item() == pytest.approx((ref / 6).item(), rel=1e-5)


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    draws = sample_dualvar(np.full(b, 300), np.full(b, 128), np.full(b, 171), 30.0, np.random.default_rng(0))
    return {"clips": torch.randn(b, 3, 3, 8, 16, 16), "perm": torch.from_numpy(draws["perm"])}


def test_forward_terms_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    parts = build(TINY, "cpu")
    assert parts.teacher is None
    n_params = sum(p.numel() for p in parts.student.parameters())
    assert sum(p.numel() for g in parts.param_groups for p in g["params"]) == n_params
    assert parts.param_groups[0]["weight_decay"] == 1e-4
    batch = _batch()
    out = parts.student(batch)
    assert set(out) == {"loss", "loss_clip", "loss_tc", "loss_rank_c1", "loss_rank_c3"}
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in out.values())
    expected = out["loss_clip"] + out["loss_tc"] + 0.5 * (out["loss_rank_c1"] + out["loss_rank_c3"])
    assert torch.allclose(out["loss"], expected)
    opt = make_optimizer(TINY, parts)
    for g in opt.param_groups:
        g["lr"] = 0.02
    first = out["loss"].item()
    for _ in range(8):
        loss = parts.student(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts.student(batch)["loss"].item() < first - 0.3


def test_bad_batch_and_config():
    parts = build(TINY, "cpu")
    with pytest.raises(ValueError, match=r"\[B, 3, 3, F, H, W\]"):
        parts.student({"clips": torch.zeros(2, 2, 3, 8, 16, 16), "perm": torch.zeros(2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="segments must be >= 2"):
        DualVarConfig(segments=1).validate()


def test_schedule_and_export():
    cfg = DualVarConfig()
    assert lr_at(cfg, 0, 100, 64) == pytest.approx(0.003)
    assert lr_at(cfg, 119 * 100 + 99, 100, 64) == pytest.approx(0.003)
    assert lr_at(cfg, 120 * 100, 100, 64) == pytest.approx(0.0003)
    assert lr_at(cfg, 160 * 100, 100, 128) == pytest.approx(0.00006)  # twice the batch, twice the lr
    parts = build(TINY, "cpu")
    exported = export_backbone(parts.student)
    assert exported["method"] == "dualvar" and exported["arch"] == "tiny"
    net = load_exported(exported).eval()
    x = torch.randn(1, 3, 8, 16, 16)
    assert torch.equal(net(x), parts.student.backbone.eval()(x))


def test_bf16_autocast_keeps_float32_losses():
    parts = build(TINY, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = parts.student(_batch(2))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
