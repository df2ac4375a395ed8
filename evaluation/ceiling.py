"""Supervised ceiling of the learning check's k-NN probe: the same backbone, trained with the labels.

Shapes: crops uint8 ``[N, F, 3, H, W]`` (F frames of each clip), labels ``[N]`` int64.

A k-NN score near chance after self-supervised training says little until one knows what *any*
training of that backbone on those clips reaches. ``supervised_ceiling`` trains the backbone
(from the state it is given, normally the random init) with a linear head on the training clips'
frames: cross-entropy, AdamW, a random shift of up to 1/10 of the side and a horizontal flip per
image. It reports the held-out top-1 (softmax averaged over each clip's frames) and the training
loss at the end. A ceiling reached by memorising the training clips (training loss near 0,
held-out top-1 near chance) means that the probe cannot show learning at this data size, whatever
the objective. The learning check also runs it on clean renderings of the same digit scans, so a
ceiling at chance can be told apart from a training recipe that cannot learn digits at all.

The default lr (3e-4, no warm-up) is the better of the two tried for the small preset's ViT on the
clean digits: after 400 steps, held-out top-1 0.32 at 3e-4 against 0.17 at 1e-3.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.knn import normalise


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """A random shift (wrapping) and a horizontal flip of a whole batch ``[B, 3, H, W]``."""
    h, w = x.shape[-2:]
    dy, dx = (int(torch.randint(-s // 10, s // 10 + 1, (), generator=gen)) for s in (h, w))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x.flip(3) if bool(torch.rand((), generator=gen) < 0.5) else x


@torch.no_grad()
def clip_top1(backbone: nn.Module, head: nn.Module, crops: Tensor, labels: Tensor, size: tuple[int, int]) -> float:
    """Held-out top-1 in [0, 1]: the softmax of every frame of a clip averaged, then the arg max."""
    n, f = crops.shape[:2]
    backbone.eval()
    probs = torch.cat([head(backbone(normalise(c, size))).softmax(-1) for c in crops.reshape(n * f, *crops.shape[2:]).split(256)])
    backbone.train()
    return float((probs.view(n, f, -1).mean(1).argmax(1) == labels).float().mean())


def supervised_ceiling(backbone: nn.Module, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                       size: tuple[int, int], steps: int = 1600, batch: int = 64, lr: float = 3e-4, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Train ``backbone`` + a linear head on ``train`` (crops, labels) for ``steps``; returns
    ``{"top1", "train_loss", "steps", "seconds"}`` (top-1 on ``val``, loss of the last 10 % of steps)."""
    gen = torch.Generator().manual_seed(seed)
    crops, labels = train
    n, f = crops.shape[:2]
    images, targets = crops.reshape(n * f, *crops.shape[2:]), labels.repeat_interleave(f)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(backbone.embed_dim, int(labels.max()) + 1)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    backbone.train()
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(images), (batch,), generator=gen)
        loss = F.cross_entropy(head(backbone(_augment(normalise(images[pick], size), gen))), targets[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % max(steps // 4, 1) == 0):
            log(f"supervised ceiling: step {step}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"held-out top-1 {clip_top1(backbone, head, *val, size):.3f}")
    tail = losses[-max(steps // 10, 1):]
    return {"top1": clip_top1(backbone, head, *val, size), "train_loss": sum(tail) / len(tail), "steps": steps,
            "seconds": time.perf_counter() - start}
