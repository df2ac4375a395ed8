"""AdamW parameter groups: layer-wise lr decay, lr multipliers, no weight decay on biases/norms.

Parameter names are those of the student (``backbone.*``, ``dino_head.*``, ``pmm.*``). Each group
carries ``lr_mult``, ``wd_mult`` and ``is_last_layer``; ``apply_schedules`` turns the per-iteration
schedule values into each group's ``lr`` and ``weight_decay``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

_EMBED = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for everything after the blocks."""
    if not name.startswith("backbone."):
        return depth + 1
    if any(tok in name for tok in _EMBED):
        return 0
    m = re.match(r"backbone\.blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def param_multipliers(name: str, depth: int, layerwise_decay: float, patch_embed_lr_mult: float,
                      pmm_lr_mult: float) -> tuple[float, float, bool]:
    """``(lr_mult, wd_mult, is_last_layer)`` for one parameter."""
    lr_mult = layerwise_decay ** (depth + 1 - layer_id(name, depth))
    if "patch_embed" in name:
        lr_mult *= patch_embed_lr_mult
    if name.startswith("pmm."):
        lr_mult *= pmm_lr_mult
    no_wd = name.endswith("bias") or "norm" in name or "gamma" in name
    return lr_mult, 0.0 if no_wd else 1.0, "last_layer" in name


def param_groups(named: Iterable[tuple[str, nn.Parameter]], depth: int, layerwise_decay: float,
                 patch_embed_lr_mult: float, pmm_lr_mult: float) -> list[dict]:
    """Trainable parameters grouped by identical ``(lr_mult, wd_mult, is_last_layer)``."""
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        key = param_multipliers(name, depth, layerwise_decay, patch_embed_lr_mult, pmm_lr_mult)
        g = groups.setdefault(key, {"params": [], "names": [], "lr_mult": key[0], "wd_mult": key[1],
                                    "is_last_layer": key[2]})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_adamw(groups: list[dict], fused: bool) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999) over ``groups``; ``fused`` on CUDA."""
    opt_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(opt_groups, lr=0.0, betas=(0.9, 0.999), weight_decay=0.0, fused=fused or None)


def apply_schedules(opt: torch.optim.Optimizer, lr: float, last_layer_lr: float, wd: float) -> None:
    """Set every group's ``lr`` and ``weight_decay`` from the schedule values."""
    for g in opt.param_groups:
        g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_mult"]
        g["weight_decay"] = wd * g["wd_mult"]
