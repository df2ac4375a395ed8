"""Video backbones for action evaluation, behind one interface.

Shapes: input clips ``x [N, 3, T, H, W]`` (ImageNet-normalised); ``forward_features(x)`` returns
``{"pooled": [N, D], "map": ...}`` (the interface of the clip methods' backbones) and the module
has ``feature_dim`` = D. ``map`` is ``[N, D, t, h, w]`` for 3D CNNs and ``[N, T, D]`` (per-frame
class tokens) for the frame-pooled ViT.

- ``tcore_vit``: a T-CoRe teacher (``model.checkpoint.load_teacher_backbone``) run on every
  frame; the feature is the final-norm class token averaged over the clip's frames;
- ``r3d_18``: torchvision's R3D-18 (``weights=None``), pooled after ``layer4``;
- ``tiny3d``: two 3D convolutions, for tests and demos.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn


class Tiny3D(nn.Module):
    """Two strided 3D convolutions with BN and ReLU, global average pooling: D = 32."""

    feature_dim = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(16), nn.ReLU(inplace=True),
            nn.Conv3d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(32), nn.ReLU(inplace=True),
        )

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        fmap = self.body(x)
        return {"pooled": fmap.mean(dim=(2, 3, 4)), "map": fmap}


class R3D18(nn.Module):
    """torchvision R3D-18 without its classifier: D = 512."""

    feature_dim = 512

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.video import r3d_18

        net = r3d_18(weights=None)
        self.stem, self.layer1, self.layer2 = net.stem, net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return {"pooled": fmap.mean(dim=(2, 3, 4)), "map": fmap}


class FramePooledViT(nn.Module):
    """An image ViT applied to each frame; the clip feature is the mean of the frames' class tokens."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.feature_dim = int(vit.embed_dim)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        n, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        tokens = self.vit(frames).view(n, t, -1)  # final-norm class token per frame
        return {"pooled": tokens.mean(dim=1), "map": tokens}


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a file (the cache key of its features)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain state dict from ``path``: the file itself, or its ``state_dict``/``model``/``backbone``
    entry, with ``module.`` / ``backbone.`` prefixes removed and classifier (``fc.``) keys dropped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    for prefix in ("module.", "backbone."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if not k.startswith("fc.")}


def detect_backbone(path: str | Path) -> str:
    """The backbone a checkpoint holds: ``tcore_vit`` for a T-CoRe teacher, ``r3d_18`` for R3D-18 keys."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and ("teacher" in obj or any(str(k).startswith("backbone.cls_token") for k in obj)):
        return "tcore_vit"
    keys = _state_dict(path)
    if "stem.0.weight" in keys and "layer4.1.conv2.0.weight" in keys:
        return "r3d_18"
    raise ValueError(f"{path}: cannot tell which backbone this checkpoint holds; give backbone=tcore_vit|r3d_18|tiny3d")


def build_backbone(name: str, ckpt: str | None, device: torch.device) -> tuple[nn.Module, str]:
    """The backbone ``name`` (``auto``: from the checkpoint) with the checkpoint's weights, or a
    seeded random initialisation without one; returns it (eval mode, on ``device``) and its name."""
    from model.checkpoint import check_state_dict, load_teacher_backbone

    if name == "auto":
        if not ckpt:
            raise ValueError("backbone=auto needs a checkpoint (CKPT=...); or name one: tcore_vit, r3d_18, tiny3d")
        name = detect_backbone(ckpt)
    if name == "tcore_vit":
        if not ckpt:
            raise ValueError("backbone tcore_vit: needs a T-CoRe checkpoint (CKPT=...)")
        return FramePooledViT(load_teacher_backbone(ckpt)).to(device).eval(), name
    makers = {"r3d_18": R3D18, "tiny3d": Tiny3D}
    if name not in makers:
        raise ValueError(f"backbone: '{name}' is not one of auto, tcore_vit, {', '.join(makers)}")
    torch.manual_seed(0)
    model = makers[name]()
    if ckpt:
        sd = _state_dict(ckpt)
        check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, sd, str(ckpt))
        model.load_state_dict(sd)
    return model.to(device).eval(), name
