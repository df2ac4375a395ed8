"""AdamW parameter groups: layer-wise lr decay, lr multipliers, no weight decay on biases/norms.

Parameter names are those of the student (``backbone.*``, ``dino_head.*``, ``pmm.*``). Each group
carries ``lr_mult``, ``wd_mult``, ``is_last_layer`` and ``is_pmm``; ``apply_schedules`` turns the per-iteration
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
    # the reference's rule: "<...>.bias", norms and LayerScale gammas are not decayed; the PMM's
    # nn.MultiheadAttention "in_proj_bias" (no dot before "bias") is
    no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
    return lr_mult, 0.0 if no_wd else 1.0, "last_layer" in name


def param_groups(named: Iterable[tuple[str, nn.Parameter]], depth: int, layerwise_decay: float,
                 patch_embed_lr_mult: float, pmm_lr_mult: float) -> list[dict]:
    """Trainable parameters grouped by identical ``(lr_mult, wd_mult, is_last_layer)``."""
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        key = param_multipliers(name, depth, layerwise_decay, patch_embed_lr_mult, pmm_lr_mult)
        key = (*key, name.startswith("pmm."))
        g = groups.setdefault(key, {"params": [], "names": [], "lr_mult": key[0], "wd_mult": key[1],
                                    "is_last_layer": key[2], "is_pmm": key[3], "pmm_lr_mult": pmm_lr_mult})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_adamw(groups: list[dict], fused: bool) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999) over ``groups``; ``fused`` on CUDA."""
    opt_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(opt_groups, lr=0.0, betas=(0.9, 0.999), weight_decay=0.0, fused=fused or None)


def apply_schedules(opt: torch.optim.Optimizer, lr: float, last_layer_lr: float, wd: float,
                    released_lr_groups: bool = False) -> None:
    """Set every group's ``lr`` and ``weight_decay`` from the schedule values.

    ``released_lr_groups`` reproduces the T-CoRe training code as released in March 2025, where a
    later assignment gave every group but the PMM's the plain ``lr``: no layer-wise decay, no
    patch-embedding multiplier and no prototype freeze (the PMM keeps ``lr × pmm_lr_mult``). The
    October 2025 fix, and the default here, apply them.
    """
    for g in opt.param_groups:
        if released_lr_groups:
            g["lr"] = lr * g["pmm_lr_mult"] if g["is_pmm"] else lr
        else:
            g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_mult"]
        g["weight_decay"] = wd * g["wd_mult"]
