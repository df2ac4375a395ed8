"""Block-mask statistics: ratios, minimum block, half of the crops unmasked, slot bookkeeping."""

from __future__ import annotations

import torch

from model.masks import make_masks, ratio_bounds


def _masks(seed: int, n_crops: int = 64, grid=(14, 14), rounds: int = 32):
    g = torch.Generator().manual_seed(seed)
    return make_masks(n_crops, grid, prob=0.5, ratio_min_max=(0.1, 0.5), min_block=4, max_block_ratio=0.5,
                      aspect=(0.3, 1 / 0.3), rounds=rounds, generator=g, device="cpu")


def _components(mask: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected components of a 2-D bool mask."""
    h, w = mask.shape
    seen = torch.zeros_like(mask)
    sizes = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                stack, size = [(i, j)], 0
                seen[i, j] = True
                while stack:
                    y, x = stack.pop()
                    size += 1
                    for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                sizes.append(size)
    return sizes


def test_ratio_intervals_spread_evenly():
    b = ratio_bounds(8, 0.5, 0.1, 0.5)
    assert len(b) == 4
    assert [round(x, 6) for pair in b for x in pair] == [0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5]


def test_half_unmasked_ratios_and_blocks():
    ratios = []
    for seed in range(4):
        mb = _masks(seed)
        counts = mb.masks.sum(1)
        assert int((counts == 0).sum()) == 32  # exactly half of the 64 crops are left unmasked
        r = sorted((counts[counts > 0].float() / 196).tolist())
        assert len(r) == 32
        # the i-th smallest ratio lies at or below the top of the i-th interval
        tops = [hi for _, hi in ratio_bounds(64, 0.5, 0.1, 0.5)]
        assert all(x <= t + 1e-9 for x, t in zip(r, tops))
        assert r[-1] > 0.35 and r[0] >= 0.05
        ratios += r
        for c in torch.nonzero(counts).flatten().tolist():
            assert min(_components(mb.masks[c].view(14, 14))) >= 4  # no block under 4 patches
    mean = sum(ratios) / len(ratios)
    assert 0.26 < mean <= 0.3  # targets average 0.3; blocks may stop a little short


def test_slots_cover_exactly_the_masked_patches():
    a, b = _masks(0), _masks(1)
    assert a.slot_crop.shape == b.slot_crop.shape  # fixed size: no data-dependent shapes
    valid = a.slot_valid.bool()
    got = set(zip(a.slot_crop[valid].tolist(), a.slot_pos[valid].tolist()))
    want = {(int(c), int(p)) for c, p in torch.nonzero(a.masks).tolist()}
    assert got == want and len(got) == int(valid.sum())
    per_crop = torch.zeros(64).index_add_(0, a.slot_crop, a.slot_weight)
    masked = a.masks.any(1)
    assert torch.allclose(per_crop[masked], torch.ones(int(masked.sum())))
    assert torch.all(per_crop[~masked] == 0)


def test_deterministic_per_seed():
    assert torch.equal(_masks(3).masks, _masks(3).masks)
    assert not torch.equal(_masks(3).masks, _masks(4).masks)


def test_tiny_grid_never_exceeds_target():
    mb = _masks(0, n_crops=16, grid=(4, 4))
    assert int((mb.masks.sum(1) > 0).sum()) <= 8
    assert int(mb.masks.sum(1).max()) <= 8  # 0.5 of 16 patches
