"""3D backbones (model/video3d.py): VCOP's R(2+1)D layout, output shapes, export round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.video3d import (
    BACKBONES,
    build_backbone,
    convert_sync_bn,
    export_layout,
    load_exported,
    r21d_vcop,
)

# Measured on VCOP's models/r21d.py R2Plus1DNet((1, 1, 1, 1)) (xudejing/video-clip-order-prediction):
# 144 state-dict entries, 14,365,303 parameters, and these shapes.
VCOP_SHAPES = {
    "conv1.spatial_conv.weight": (83, 3, 1, 7, 7),
    "conv1.temporal_conv.weight": (64, 83, 3, 1, 1),
    "conv2.block1.conv1.spatial_conv.weight": (144, 64, 1, 3, 3),
    "conv3.block1.downsampleconv.spatial_conv.weight": (42, 64, 1, 1, 1),
    "conv3.block1.downsamplebn.weight": (128,),
    "conv5.block1.conv2.temporal_conv.weight": (512, 1152, 3, 1, 1),
    "conv5.block1.bn2.running_var": (512,),
}


def test_vcop_r21d_layout_and_parameter_count():
    net = r21d_vcop()
    sd = net.state_dict()
    assert len(sd) == 144
    assert sum(p.numel() for p in net.parameters()) == 14_365_303  # the 14.4 M DualVar and CSTP report
    for key, shape in VCOP_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(isinstance(m, nn.Conv3d) and m.bias is not None for m in net.modules())


@pytest.mark.parametrize("arch,dim,fmap,early", [
    ("r3d18", 512, (2, 7, 7), (64, 16, 56, 56)),
    ("r21d18", 512, (2, 7, 7), (64, 16, 56, 56)),
    ("s3d", 1024, (2, 3, 3), (192, 8, 14, 14)),
    ("r21d_vcop", 512, (2, 7, 7), (64, 16, 56, 56)),
])
def test_real_backbones_at_16x112_on_meta(arch, dim, fmap, early):
    with torch.device("meta"):
        net = build_backbone(arch)
        out = net.forward_features(torch.empty(2, 3, 16, 112, 112))
    assert net.feature_dim == dim and net.arch == arch
    assert tuple(out["pooled"].shape) == (2, dim)
    assert tuple(out["map"].shape) == (2, dim, *fmap)
    assert tuple(out["early"].shape) == (2, *early)


def test_tiny_forward_pools_the_map_and_export_round_trips():
    torch.manual_seed(0)
    net = build_backbone("tiny").eval()
    x = torch.randn(2, 3, 8, 32, 32)
    out = net.forward_features(x)
    assert out["map"].shape == (2, 64, 1, 2, 2) and out["early"].shape == (2, 8, 8, 16, 16)
    assert torch.allclose(out["pooled"], out["map"].mean(dim=(2, 3, 4)))
    assert torch.equal(net(x), out["pooled"])
    exported = export_layout(net, "dualvar")
    assert exported["arch"] == "tiny" and exported["method"] == "dualvar"
    again = load_exported(exported).eval()
    assert torch.equal(again(x), net(x))
    with pytest.raises(ValueError, match="missing key 'arch'"):
        load_exported({"backbone": exported["backbone"], "method": "dualvar"})
    with pytest.raises(ValueError, match="unknown backbone arch 'r50'"):
        build_backbone("r50")


def test_sync_bn_only_under_a_process_group():
    net = BACKBONES["tiny"]()
    assert convert_sync_bn(net) is net  # no process group: plain BatchNorm stays
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
