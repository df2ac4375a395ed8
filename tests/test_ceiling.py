"""The k-NN probe's supervised ceiling (``evaluation.ceiling``): high held-out top-1 when the
labels follow the images, chance when they do not."""

from __future__ import annotations

import torch

from evaluation.ceiling import supervised_ceiling
from model.vit import vit_tiny


def stripes(n: int, gen: torch.Generator, random_labels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [n, 2, 3, 32, 32] of noise under bright stripes of one of 4 kinds (the class):
    horizontal, vertical, checks, none; or with labels drawn independently of the images."""
    kinds = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randint(0, 120, (n, 2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    rows = (torch.arange(32) // 2 % 2).bool()
    masks = [rows[:, None].expand(32, 32), rows[None, :].expand(32, 32), rows[:, None] ^ rows[None, :],
             torch.zeros(32, 32, dtype=torch.bool)]
    for i, k in enumerate(kinds.tolist()):
        x[i, :, :, masks[k]] = 250
    labels = torch.randint(0, 4, (n,), generator=gen) if random_labels else kinds
    return x, labels


def test_ceiling_learns_a_learnable_task_and_not_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    res = supervised_ceiling(vit_tiny(img_size=32, patch_size=8, depth=1, layerscale_init=1.0), stripes(48, gen, False),
                             stripes(40, gen, False), (32, 32), steps=150, batch=32, lr=1e-3)
    assert res["top1"] >= 0.9 and res["train_loss"] < 0.5 and res["steps"] == 150, res
    torch.manual_seed(0)
    noise = supervised_ceiling(vit_tiny(img_size=32, patch_size=8, depth=1, layerscale_init=1.0), stripes(48, gen, True),
                               stripes(40, gen, True), (32, 32), steps=150, batch=32, lr=1e-3)
    assert noise["top1"] <= 0.5, noise  # chance: 0.25
