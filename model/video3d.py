"""3D CNN backbones for the clip-based methods (DualVar, CSTP, local-global).

Shapes: a clip batch is ``x [N, 3, T, H, W]`` (channels, then time, then space, as torchvision's
video models). Every backbone exposes ``forward_features(x)`` returning

- ``"early"``: the output of the first stage ``[N, C1, T1, H1, W1]`` (low-level features, used
  by the local-global method's mutual-information term),
- ``"map"``: the last feature map ``[N, C, t, h, w]``,
- ``"pooled"``: its global average ``[N, C]`` (C = ``feature_dim``: 512, or 1024 for S3D),

and ``forward(x)`` returning ``"pooled"``. At 16 x 112 x 112 the maps are ``[N, 512, 2, 7, 7]``
(R3D-18, R(2+1)D-18, VCOP's R(2+1)D) and ``[N, 1024, 2, 3, 3]`` (S3D).

Architectures (all built without downloads; choose one by name in ``BACKBONES``):

- ``r3d18``, ``r21d18``, ``s3d``: torchvision's video models with ``weights=None``; their
  state-dict keys are torchvision's minus the classifier, so torchvision weights load.
- ``r21d_vcop``: the R(2+1)D of VCOP (Xu et al., CVPR 2019) with one block per stage
  (``layer_sizes=(1, 1, 1, 1)``), 14.4 M parameters, which DualVar and CSTP use. Same module
  names as VCOP's ``models/r21d.py`` (``conv1.spatial_conv``, ``conv2.block1.conv1.bn``, ...), so
  checkpoints released for it load: each (2+1)D convolution is a spatial ``1 x k x k``
  convolution to ``M = floor(k_t k^2 C_in C_out / (k^2 C_in + k_t C_out))`` channels, BN, ReLU,
  then a temporal ``k_t x 1 x 1`` convolution (no bias anywhere); the stem is a (2+1)D
  ``3 x 7 x 7`` convolution with stride ``(1, 2, 2)`` and no max-pool; stages 3-5 halve time
  and space in their first block, whose shortcut is a (2+1)D ``1 x 1 x 1`` stride-2 convolution.
- ``tiny``: the same R(2+1)D with widths (8, 16, 32, 64), for CPU tests (``feature_dim`` 64).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models import video as tvv


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def _pool(fmap: Tensor) -> Tensor:
    return fmap.mean(dim=(2, 3, 4))


class SpatioTemporalConv(nn.Module):
    """(2+1)D convolution: spatial ``1 x k x k`` conv -> BN -> ReLU -> temporal ``k_t x 1 x 1`` conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple, stride: int | tuple = 1,
                 padding: int | tuple = 0) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel)
        st, sh, sw = _triple(stride)
        pt, ph, pw = _triple(padding)
        mid = math.floor(kt * kh * kw * c_in * c_out / (kh * kw * c_in + kt * c_out))
        self.spatial_conv = nn.Conv3d(c_in, mid, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
        self.bn = nn.BatchNorm3d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.temporal_conv = nn.Conv3d(mid, c_out, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


class SpatioTemporalResBlock(nn.Module):
    """Residual block of two ``3 x 3 x 3`` (2+1)D convolutions; ``downsample`` halves T, H, W."""

    def __init__(self, c_in: int, c_out: int, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        stride = 2 if downsample else 1
        if downsample:
            self.downsampleconv = SpatioTemporalConv(c_in, c_out, 1, stride=2)
            self.downsamplebn = nn.BatchNorm3d(c_out)
        self.conv1 = SpatioTemporalConv(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SpatioTemporalConv(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.outrelu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        res = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.downsample:
            x = self.downsamplebn(self.downsampleconv(x))
        return self.outrelu(x + res)


class SpatioTemporalResLayer(nn.Module):
    """``block1`` (maybe downsampling) followed by ``n - 1`` plain blocks in ``blocks``."""

    def __init__(self, c_in: int, c_out: int, n: int, downsample: bool = False) -> None:
        super().__init__()
        self.block1 = SpatioTemporalResBlock(c_in, c_out, downsample)
        self.blocks = nn.ModuleList(SpatioTemporalResBlock(c_out, c_out) for _ in range(n - 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        for block in self.blocks:
            x = block(x)
        return x


class R21DVCOP(nn.Module):
    """VCOP's R(2+1)D (module names as in its ``R2Plus1DNet``), without the classifier."""

    def __init__(self, layer_sizes: tuple[int, ...] = (1, 1, 1, 1),
                 widths: tuple[int, ...] = (64, 128, 256, 512), arch: str = "r21d_vcop") -> None:
        super().__init__()
        if len(layer_sizes) != 4 or len(widths) != 4:
            raise ValueError(f"R21DVCOP: need 4 layer sizes and 4 widths, got {layer_sizes}, {widths}")
        w1, w2, w3, w4 = widths
        self.conv1 = SpatioTemporalConv(3, w1, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        self.bn1 = nn.BatchNorm3d(w1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SpatioTemporalResLayer(w1, w1, layer_sizes[0])
        self.conv3 = SpatioTemporalResLayer(w1, w2, layer_sizes[1], downsample=True)
        self.conv4 = SpatioTemporalResLayer(w2, w3, layer_sizes[2], downsample=True)
        self.conv5 = SpatioTemporalResLayer(w3, w4, layer_sizes[3], downsample=True)
        self.feature_dim, self.arch = w4, arch

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"early", "map", "pooled"}`` (see the module docstring)."""
        early = self.conv2(self.relu1(self.bn1(self.conv1(x))))
        fmap = self.conv5(self.conv4(self.conv3(early)))
        return {"early": early, "map": fmap, "pooled": _pool(fmap)}

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["pooled"]


class TorchvisionResNet3D(nn.Module):
    """torchvision's ``VideoResNet`` (R3D-18 / R(2+1)D-18) without ``avgpool`` and ``fc``."""

    def __init__(self, net: tvv.VideoResNet, arch: str) -> None:
        super().__init__()
        self.stem, self.layer1, self.layer2 = net.stem, net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.feature_dim, self.arch = net.fc.in_features, arch

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"early", "map", "pooled"}`` (see the module docstring)."""
        early = self.layer1(self.stem(x))
        fmap = self.layer4(self.layer3(self.layer2(early)))
        return {"early": early, "map": fmap, "pooled": _pool(fmap)}

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["pooled"]


class TorchvisionS3D(nn.Module):
    """torchvision's S3D ``features`` (the stem up to the first inception block is "early")."""

    EARLY = 5  # features[:5]: separable stem, max-pool, 1x1, separable 3x3, max-pool

    def __init__(self, net: tvv.S3D, arch: str = "s3d") -> None:
        super().__init__()
        self.features = net.features
        self.feature_dim, self.arch = 1024, arch

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"early", "map", "pooled"}`` (see the module docstring)."""
        early = self.features[: self.EARLY](x)
        fmap = self.features[self.EARLY:](early)
        return {"early": early, "map": fmap, "pooled": _pool(fmap)}

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["pooled"]


def r3d18() -> TorchvisionResNet3D:
    """torchvision R3D-18 (33.2 M parameters without the classifier)."""
    return TorchvisionResNet3D(tvv.r3d_18(weights=None), "r3d18")


def r21d18() -> TorchvisionResNet3D:
    """torchvision R(2+1)D-18 (31.3 M parameters without the classifier)."""
    return TorchvisionResNet3D(tvv.r2plus1d_18(weights=None), "r21d18")


def s3d() -> TorchvisionS3D:
    """torchvision S3D (7.9 M parameters in ``features``)."""
    return TorchvisionS3D(tvv.s3d(weights=None))


def r21d_vcop() -> R21DVCOP:
    """VCOP's R(2+1)D with one block per stage: 14.4 M parameters, 512-d."""
    return R21DVCOP((1, 1, 1, 1))


def tiny() -> R21DVCOP:
    """The VCOP R(2+1)D layout at widths (8, 16, 32, 64): a CPU test backbone, 64-d."""
    return R21DVCOP((1, 1, 1, 1), (8, 16, 32, 64), arch="tiny")


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "r3d18": r3d18,
    "r21d18": r21d18,
    "s3d": s3d,
    "r21d_vcop": r21d_vcop,
    "tiny": tiny,
}


def build_backbone(arch: str) -> nn.Module:
    """``BACKBONES[arch]()`` with a clear error for an unknown name."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone arch '{arch}' (known: {', '.join(BACKBONES)})")
    return BACKBONES[arch]()


def convert_sync_bn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """BatchNorm -> SyncBatchNorm when ``enabled`` and a process group of 2+ ranks is running.

    For the methods whose reference code uses SyncBN under DDP (DualVar, CSTP). Call before
    wrapping in DDP; single-process runs keep plain BatchNorm (statistics are the same there).
    """
    if enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def export_layout(backbone: nn.Module, method: str) -> dict:
    """The documented export: ``{"backbone": state_dict (CPU), "arch": name, "method": name}``."""
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    return {"backbone": state, "arch": backbone.arch, "method": method}


def load_exported(export: dict) -> nn.Module:
    """Rebuild the backbone of an ``export_layout`` dict and load its weights (strict)."""
    for key in ("backbone", "arch", "method"):
        if key not in export:
            raise ValueError(f"backbone export: missing key '{key}' (have {sorted(export)})")
    net = build_backbone(export["arch"])
    net.load_state_dict(export["backbone"])
    return net
