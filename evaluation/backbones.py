"""Video backbones for action evaluation, behind one interface.

Shapes: input clips ``x [N, 3, T, H, W]`` (ImageNet-normalised); ``forward_features(x)`` returns
``{"pooled": [N, D], "map": ...}`` and the module has ``feature_dim`` = D. ``map`` is
``[N, D, t, h, w]`` for the 3D CNNs and ``[N, T, D]`` (per-frame class tokens) for the ViT.

- ``tcore_vit``: a T-CoRe teacher (``model.checkpoint.load_teacher_backbone``) run on every
  frame; the clip feature is the final-norm class token averaged over the clip's frames;
- every 3D CNN of ``model/video3d.py`` (``r3d18``, ``r21d18``, ``s3d``, ``r21d_vcop``, ``tiny``):
  from a clip method's export (``{"backbone", "arch", "method"}``) or a plain state dict with
  torchvision's or VCOP's key names; without a checkpoint, a seeded random initialisation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from model import video3d

CLASSIFIER_PREFIXES = ("fc.", "linear.")  # classification heads left out of a backbone's weights


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


def _load(path: str | Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _state_dict(path: str | Path, obj=None) -> dict[str, Tensor]:
    """A plain state dict from ``path``: the file itself, or its ``state_dict``/``model``/``backbone``
    entry, with ``module.`` / ``backbone.`` prefixes removed and classifier keys dropped."""
    obj = _load(path) if obj is None else obj
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    for prefix in ("module.", "backbone."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if not k.startswith(CLASSIFIER_PREFIXES)}


def _shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a video3d backbone (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in video3d.build_backbone(arch).state_dict().items()}


def detect_backbone(path: str | Path) -> str:
    """The backbone a checkpoint holds: ``tcore_vit`` for a T-CoRe teacher, else the video3d arch
    named by an export or whose keys and shapes the state dict has."""
    obj = _load(path)
    if isinstance(obj, dict) and ("teacher" in obj or any(str(k).startswith("backbone.cls_token") for k in obj)):
        return "tcore_vit"
    if isinstance(obj, dict) and isinstance(obj.get("arch"), str) and obj["arch"] in video3d.BACKBONES:
        return obj["arch"]
    sd = {k: tuple(v.shape) for k, v in _state_dict(path, obj).items()}
    for arch in video3d.BACKBONES:
        if _shapes(arch) == sd:
            return arch
    raise ValueError(f"{path}: cannot tell which backbone this checkpoint holds; give backbone=tcore_vit or one "
                     f"of {', '.join(video3d.BACKBONES)}")


def build_backbone(name: str, ckpt: str | None, device: torch.device) -> tuple[nn.Module, str]:
    """The backbone ``name`` (``auto``: from the checkpoint) with the checkpoint's weights, or a
    seeded random initialisation without one; returns it (eval mode, on ``device``) and its name."""
    from model.checkpoint import check_state_dict, load_teacher_backbone

    if name == "auto":
        if not ckpt:
            raise ValueError("backbone=auto needs a checkpoint (CKPT=...); or name one: tcore_vit, "
                             + ", ".join(video3d.BACKBONES))
        name = detect_backbone(ckpt)
    if name == "tcore_vit":
        if not ckpt:
            raise ValueError("backbone tcore_vit: needs a T-CoRe checkpoint (CKPT=...)")
        return FramePooledViT(load_teacher_backbone(ckpt)).to(device).eval(), name
    if name not in video3d.BACKBONES:
        raise ValueError(f"backbone: '{name}' is not one of auto, tcore_vit, {', '.join(video3d.BACKBONES)}")
    torch.manual_seed(0)
    model = video3d.build_backbone(name)
    if ckpt:
        sd = _state_dict(ckpt)
        check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, sd, str(ckpt))
        model.load_state_dict(sd)
    return model.to(device).eval(), name
