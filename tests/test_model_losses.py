"""Each loss term against values worked out by hand on tiny tensors, and the centring."""

from __future__ import annotations

import math

import torch

from model.config import ModelConfig
from model.losses import centred_softmax, dino_loss, koleo_loss, masked_patch_loss, past_future_loss
from model.masks import MaskBatch
from model.tcore import TCoReStudent, Views
from model.teacher import Teacher


def _ce(t: list[float], s: list[float], temp: float) -> float:
    """-sum_k t_k log softmax(s / temp)_k, written out."""
    z = [x / temp for x in s]
    lse = math.log(sum(math.exp(x) for x in z))
    return -sum(tk * (zk - lse) for tk, zk in zip(t, z))


def test_centred_softmax_by_hand():
    logits = torch.tensor([[0.0, math.log(2.0)]])
    assert torch.allclose(centred_softmax(logits, torch.zeros(1, 2), 1.0), torch.tensor([[1 / 3, 2 / 3]]))
    # the centre removes the preference entirely
    assert torch.allclose(centred_softmax(logits, logits, 1.0), torch.tensor([[0.5, 0.5]]))
    # temperature 0.5 squares the odds: 1:4
    assert torch.allclose(centred_softmax(logits, torch.zeros(1, 2), 0.5), torch.tensor([[0.2, 0.8]]))


def test_dino_loss_pairs_by_hand():
    s0, s1, loc = [1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.0]
    t0, t1 = [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]
    sg = torch.tensor([[s0], [s1]])  # [G=2, B=1, K=3]
    tt = torch.tensor([[t0], [t1]])
    temp = 0.5
    want = (_ce(t1, s0, temp) + _ce(t0, s1, temp)) / 2  # global crops: the *other* teacher view only
    assert math.isclose(dino_loss(sg, None, tt, temp).item(), want, rel_tol=1e-5)
    want_l = (_ce(t1, s0, temp) + _ce(t0, s1, temp) + _ce(t0, loc, temp) + _ce(t1, loc, temp)) / 4
    got = dino_loss(sg, torch.tensor([[loc]]), tt, temp).item()
    assert math.isclose(got, want_l, rel_tol=1e-5)


def test_koleo_by_hand():
    # unit vectors at 0, 90 and 180 degrees: every nearest neighbour is sqrt(2) away
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert math.isclose(koleo_loss(x).item(), -math.log(math.sqrt(2)), rel_tol=1e-5)
    assert math.isclose(koleo_loss(5 * x).item(), koleo_loss(x).item(), rel_tol=1e-6)  # scale-free
    # 0, 60, 180 degrees: distances 1, 1, sqrt(2 - 2 cos 120) = sqrt(3)
    y = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0]])
    want = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3))) / 3
    assert math.isclose(koleo_loss(y).item(), want, rel_tol=1e-4, abs_tol=1e-6)
    assert koleo_loss(x[:1]).item() == 0.0


def test_masked_patch_loss_weighting_by_hand():
    # 3 global crops: crop 0 has 2 masked patches (slots a, b), crop 1 has 1 (slot c), crop 2 none;
    # slot d is padding (weight 0) and must not count.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [9.0, -9.0]])
    t = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
    w = torch.tensor([0.5, 0.5, 1.0, 0.0])
    temp = 0.1
    ce = [_ce(t[i].tolist(), s[i].tolist(), temp) for i in range(3)]
    want = (ce[0] / 2 + ce[1] / 2 + ce[2] / 1) / 3
    assert math.isclose(masked_patch_loss(s, t, w, 3, temp).item(), want, rel_tol=1e-5)


def test_past_future_mse_by_hand():
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    f = torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.0, 0.0]])
    valid = torch.tensor([1.0, 1.0, 0.0])  # third slot is padding
    want = ((1 + 4) / 2 + (1 + 9) / 2) / 2
    assert math.isclose(past_future_loss(p, f, valid).item(), want, rel_tol=1e-6)
    assert past_future_loss(p, f, torch.zeros(3)).item() == 0.0


def _tiny_teacher() -> Teacher:
    cfg = ModelConfig(arch="vit_tiny", img_size=32, depth=1, head_n_prototypes=3, head_hidden_dim=8,
                      head_bottleneck_dim=4, pmm_heads=2)
    s = TCoReStudent(cfg)
    return Teacher(s.backbone, s.dino_head, 3, centre_momentum=0.9)


def test_centre_update_by_hand():
    te = _tiny_teacher()
    te.cls_centre.fill_(1.0)
    te.patch_centre.fill_(2.0)
    cls_logits = torch.tensor([[0.0, 2.0, 4.0], [2.0, 2.0, 2.0]])  # mean (1, 2, 3)
    patch_logits = torch.tensor([[3.0, 0.0, 0.0], [5.0, 2.0, 0.0], [100.0, 100.0, 100.0]])
    valid = torch.tensor([1.0, 1.0, 0.0])  # masked mean over valid slots only: (4, 1, 0)
    te.update_centres(cls_logits, patch_logits, valid)
    assert torch.allclose(te.cls_centre, torch.tensor([[1.0, 1.1, 1.2]]))
    assert torch.allclose(te.patch_centre, torch.tensor([[2.2, 1.9, 1.8]]))
    te.update_centres(cls_logits, patch_logits, torch.zeros(3))  # nothing masked: patch centre kept
    assert torch.allclose(te.patch_centre, torch.tensor([[2.2, 1.9, 1.8]]))


def test_student_losses_use_masked_slots_only():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="vit_tiny", img_size=32, depth=1, drop_path_rate=0.0, head_n_prototypes=16, head_hidden_dim=16,
                      head_bottleneck_dim=8, pmm_heads=2)
    s = TCoReStudent(cfg)
    b = 2
    views = Views(torch.randn(2 * b, 3, 32, 32), torch.randn(2 * b, 3, 16, 16), torch.randn(2 * b, 3, 32, 32),
                  torch.randn(2 * b, 3, 32, 32), 2, 2)
    masks = torch.zeros(2 * b, 4, dtype=torch.bool)
    masks[1, :2] = True
    mb = MaskBatch(masks, torch.tensor([1, 1, 1]), torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 0.0]),
                   torch.tensor([0.5, 0.5, 0.0]))
    t_cls = torch.softmax(torch.randn(2, b, 16), -1)
    t_patch = torch.softmax(torch.randn(3, 16), -1)
    out = s(views, mb, t_cls, t_patch)
    assert set(out) == {"loss", "loss_dino", "loss_koleo", "loss_pt", "loss_ft", "loss_pf"}
    total = 1.0 * out["loss_dino"] + 0.1 * out["loss_koleo"] + 0.8 * (out["loss_pt"] + out["loss_ft"]) \
        + 20.0 * out["loss_pf"]
    assert torch.allclose(out["loss"], total)
    t_patch2 = t_patch.clone()
    t_patch2[2] = torch.softmax(torch.randn(16), -1)  # padding slot target changes nothing
    out2 = s(views, mb, t_cls, t_patch2)
    assert torch.allclose(out2["loss_pt"], out["loss_pt"])
    out["loss"].backward()
    assert all(p.grad is not None for p in s.parameters())


def test_bf16_autocast_keeps_losses_float32():
    """The GPU runs under bf16 autocast; the same code under CPU autocast keeps every term fp32."""
    from model.masks import make_masks

    torch.manual_seed(0)
    cfg = ModelConfig(arch="vit_tiny", img_size=32, depth=1, drop_path_rate=0.0, head_n_prototypes=64,
                      head_hidden_dim=32, head_bottleneck_dim=16, pmm_heads=2)
    s = TCoReStudent(cfg)
    te = Teacher(s.backbone, s.dino_head, 64, 0.9)
    views = Views(torch.randn(8, 3, 32, 32), torch.randn(8, 3, 16, 16), torch.randn(8, 3, 32, 32),
                  torch.randn(8, 3, 32, 32), 2, 2)
    mb = make_masks(8, (2, 2), 0, prob=0.5, ratio_min_max=(0.1, 0.5), min_block=1, max_block_ratio=0.5,
                    aspect=(0.3, 3.3))
    t_cls, t_patch, _ = te.targets(views.current_global, mb, 2, 0.04)
    ref = s(views, mb, t_cls, t_patch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = s(views, mb, t_cls, t_patch)
    for k, v in out.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
    assert torch.allclose(out["loss_dino"], ref["loss_dino"], rtol=0.05)
    out["loss"].backward()


def test_pmm_matches_the_reference_block_layout():
    """PyTorch-default init and eps, nn.MultiheadAttention semantics: h1 = LN(4·MHA(q, a, a) + q), ..."""
    from model.pmm import PatchMatchingModule

    torch.manual_seed(0)
    pmm = PatchMatchingModule(32, 4, 4.0).eval()
    assert pmm.norm1.eps == 1e-5 and torch.count_nonzero(pmm.cross_attn.in_proj_bias) == 0
    q, a = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    mha.load_state_dict(pmm.cross_attn.state_dict())
    h1 = torch.nn.functional.layer_norm(4.0 * mha(q, a, a)[0] + q, (32,), pmm.norm1.weight, pmm.norm1.bias)
    mha.load_state_dict(pmm.self_attn.state_dict())
    h2 = torch.nn.functional.layer_norm(mha(h1, h1, h1)[0] + h1, (32,), pmm.norm2.weight, pmm.norm2.bias)
    want = torch.nn.functional.layer_norm(pmm.linear(h2) + h2, (32,), pmm.norm3.weight, pmm.norm3.bias)
    assert torch.allclose(pmm(q, a), want, atol=1e-5)


def test_sinkhorn_targets_equalise_prototypes_over_the_batch():
    from model.losses import sinkhorn_knopp

    torch.manual_seed(0)
    logits = torch.randn(64, 16)
    q = sinkhorn_knopp(logits, 0.1, iterations=100)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)
    assert torch.allclose(q.sum(0), torch.full((16,), 4.0), atol=1e-3)  # 64 rows / 16 prototypes
    valid = (torch.arange(64) < 40).float()  # padding rows drop out of the batch
    q = sinkhorn_knopp(logits, 0.1, weight=valid, iterations=100)
    assert torch.count_nonzero(q[40:]) == 0 and torch.allclose(q[:40].sum(0), torch.full((16,), 2.5), atol=1e-2)
    # a logit shared by all rows changes nothing (SK, like centring, removes what every input shares)
    assert torch.allclose(sinkhorn_knopp(logits + torch.randn(1, 16), 0.1, iterations=3),
                          sinkhorn_knopp(logits, 0.1, iterations=3), atol=1e-5)
