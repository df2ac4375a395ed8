"""Backbone shapes, mask token, and teacher export/import against the reference key file."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import (
    export_teacher,
    load_teacher_backbone,
    reference_keys,
    teacher_state_dict,
)
from model.head import DINOHead
from model.vit import vit_base, vit_small, vit_tiny


@pytest.mark.parametrize("hw", [(64, 64), (32, 32), (16, 16), (64, 96), (224, 224)])
def test_patch_tokens_any_size(hw):
    torch.manual_seed(0)
    m = vit_tiny(depth=2).eval()
    h, w = hw
    out = m.get_patch_tokens(torch.randn(2, 3, h, w))
    assert out.shape == (2, h // 16, w // 16, 128)
    assert torch.isfinite(out).all()
    feats = m.forward_features(torch.randn(2, 3, h, w))
    assert feats["cls"].shape == (2, 128) and feats["registers"].shape == (2, 4, 128)


def test_bad_size_is_value_error():
    m = vit_tiny(depth=1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m.get_patch_tokens(torch.randn(1, 3, 40, 64))


def test_pos_embed_identity_at_native_size_and_resized_elsewhere():
    m = vit_tiny(depth=1)
    assert m.interpolate_pos_embed(4, 4) is m.pos_embed
    assert m.interpolate_pos_embed(2, 3).shape == (1, 1 + 6, 128)
    # the class-token position is never resized
    assert torch.equal(m.interpolate_pos_embed(7, 7)[:, 0], m.pos_embed[:, 0])


def test_mask_token_replaces_masked_patches_only():
    torch.manual_seed(0)
    m = vit_tiny(depth=1)
    with torch.no_grad():
        m.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    plain = m.prepare_tokens(x)
    masked = m.prepare_tokens(x, masks)
    r = m.num_prefix_tokens
    pos = m.interpolate_pos_embed(2, 2)[0, 1:]
    assert torch.allclose(masked[0, r + 0], m.mask_token[0] + pos[0])
    assert torch.allclose(masked[0, r + 3], m.mask_token[0] + pos[3])
    assert torch.equal(masked[0, r + 1], plain[0, r + 1])
    assert torch.equal(masked[1], plain[1])
    assert torch.equal(masked[:, :r], plain[:, :r])  # cls + registers untouched


def test_uniform_drop_path():
    m = vit_small(device="meta", drop_path=0.1)
    rates = {blk.drop_path1.drop_prob for blk in m.blocks} | {blk.drop_path2.drop_prob for blk in m.blocks}
    assert rates == {0.1}


@pytest.mark.parametrize("arch,factory,dim", [("vit_small", vit_small, 384), ("vit_base", vit_base, 768)])
def test_teacher_keys_match_reference_exactly(arch, factory, dim):
    sd = teacher_state_dict(factory(device="meta"), DINOHead(dim, device="meta"))
    ours = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert sorted(ours) == sorted(reference_keys(arch))


def test_reference_layout_file_loads_and_infers_vit_small(tmp_path):
    sd = {k: torch.zeros(s) for k, s in reference_keys("vit_small")}
    path = tmp_path / "ref.pth"
    torch.save({"teacher": sd}, path)
    m = load_teacher_backbone(path)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.num_registers) == (384, 12, 6, 4)
    assert m.get_patch_tokens(torch.zeros(1, 3, 96, 64)).shape == (1, 6, 4, 384)


def test_export_import_round_trip(tmp_path):
    torch.manual_seed(0)
    bb, head = vit_tiny(depth=2).eval(), DINOHead(128, 64, 32, 16)
    path = tmp_path / "teacher.pth"
    export_teacher(bb, head, path)
    obj = torch.load(path, weights_only=True)
    assert list(obj) == ["teacher"]
    assert set(obj["teacher"]) == set(teacher_state_dict(bb, head))
    loaded = load_teacher_backbone(path)
    x = torch.randn(2, 3, 64, 48)
    assert torch.equal(loaded.get_patch_tokens(x), bb.get_patch_tokens(x))


def test_mismatch_lists_offending_keys(tmp_path):
    bb, head = vit_tiny(depth=1), DINOHead(128, 64, 32, 16)
    sd = teacher_state_dict(bb, head)
    del sd["backbone.norm.bias"]
    sd["backbone.mask_token"] = torch.zeros(1, 7)
    sd["backbone.extra"] = torch.zeros(1)
    torch.save({"teacher": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_teacher_backbone(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg and "backbone.norm.bias" in msg
    assert "backbone.mask_token" in msg and "backbone.extra" in msg
    torch.save({"student": {}}, tmp_path / "none.pth")
    with pytest.raises(ValueError, match="no 'teacher' entry"):
        load_teacher_backbone(tmp_path / "none.pth")


def test_pos_embed_resize_is_antialiased_bicubic_like_the_reference():
    torch.manual_seed(0)
    m = vit_tiny(depth=1, img_size=224)  # 14x14 grid
    grid = m.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True)
    got = m.interpolate_pos_embed(6, 6)[:, 1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    plain = vit_tiny(depth=1, img_size=224, pos_antialias=False)
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain.interpolate_pos_embed(6, 6), m.interpolate_pos_embed(6, 6), atol=1e-4)


def test_prototype_layer_init_matches_nn_linear_default():
    torch.manual_seed(0)
    head = DINOHead(64, 4096, 128, 256)
    rows = head.last_layer.weight_v.norm(dim=1)
    assert 0.55 < rows.mean() < 0.60  # nn.Linear default: U(±1/sqrt(256)) -> row norm sqrt(256/3)/16
    assert torch.equal(head.last_layer.weight_g, torch.ones(4096, 1))
    small = DINOHead(64, 4096, 128, 256, last_layer_init="trunc_normal").last_layer.weight_v.norm(dim=1)
    assert 0.30 < small.mean() < 0.34
