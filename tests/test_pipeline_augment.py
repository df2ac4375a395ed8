"""The per-view photometric steps of the DALI graph against direct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types

from pipeline.augment import gaussian_blur, jitter, solarize
from pipeline.config import PipelineConfig
from pipeline.loader import build_loader

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (24 + 4 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(4)]


def _run(graph) -> list:
    @pipeline_def(batch_size=len(IMAGES), num_threads=1, device_id=None, seed=7)
    def pipe():
        img = fn.external_source(source=lambda: IMAGES, batch=True, layout="HWC", dtype=types.UINT8)
        return graph(img)

    p = pipe()
    p.build()
    return [[np.asarray(out[i]) for i in range(len(IMAGES))] for out in p.run()]


def _seq(img, n: int):
    return fn.stack(*[img] * n, axis_name="F")


@pytest.mark.parametrize("sigma", [0.3, 1.1, 2.0])
def test_blur_matches_gaussian_blur_per_view(sigma: float) -> None:
    cfg = PipelineConfig(blur_sigma=(sigma, sigma))
    ours, ref = _run(lambda img: (gaussian_blur(_seq(img, 3), cfg, [1.0, 0.0, 1.0]),
                                  fn.gaussian_blur(img, sigma=sigma)))
    for seq, want, img in zip(ours, ref, IMAGES):
        assert seq.shape == (3, *img.shape)
        for view in (0, 2):  # blurred views: DALI's own Gaussian, up to rounding
            assert np.abs(seq[view].astype(int) - want.astype(int)).max() <= 1
        assert np.array_equal(seq[1], img)  # p = 0: untouched


def test_blur_probability_is_per_view() -> None:
    cfg = PipelineConfig(blur_sigma=(1.5, 1.5))
    (ours,) = _run(lambda img: (gaussian_blur(_seq(img, 8), cfg, [0.5] * 8),))
    blurred = [not np.array_equal(v, img) for seq, img in zip(ours, IMAGES) for v in seq]
    assert 0 < sum(blurred) < len(blurred)  # some views blurred, some not, within samples


def test_solarize_per_view() -> None:
    always, half = _run(lambda img: (solarize(_seq(img, 2), 1.0, 2), solarize(_seq(img, 8), 0.5, 8)))
    flipped = 0
    for seq, mixed, img in zip(always, half, IMAGES):
        solar = np.where(img >= 128, 255 - img, img)
        assert all(np.array_equal(v, solar) for v in seq)
        assert all(np.array_equal(v, solar) or np.array_equal(v, img) for v in mixed)
        flipped += sum(np.array_equal(v, solar) for v in mixed)
    assert 0 < flipped < 8 * len(IMAGES)  # each view draws its own coin


YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def test_jitter_off_is_identity_and_grayscale_is_luma() -> None:
    off = PipelineConfig(jitter_p=0.0, grayscale_p=0.0)
    gray = PipelineConfig(jitter_p=0.0, grayscale_p=1.0)
    same, grey = _run(lambda img: (jitter(_seq(img, 3), off, 3), jitter(_seq(img, 3), gray, 3)))
    for a, g, img in zip(same, grey, IMAGES):
        assert all(np.array_equal(v, img) for v in a)
        luma = np.clip(np.rint(img.astype(np.float64) @ YIQ[0]), 0, 255)
        for v in g:
            assert np.abs(v.astype(int) - luma[..., None]).max() <= 1  # R = G = B = luma, ±rounding


def test_jitter_hue_turns_chroma_and_keeps_luma() -> None:
    """Hue alone (b = c = s = 1) rotates YIQ chroma: luma and chroma length stay, the angle moves."""
    cfg = PipelineConfig(jitter_p=1.0, grayscale_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    mid = [(96 + img // 4).astype(np.uint8) for img in IMAGES]  # no clamping after a hue turn
    (ours,) = _run(lambda img: (jitter(_seq(fn.cast(img // 4 + 96, dtype=types.UINT8), 6), cfg, 6),))
    turned = 0
    for seq, img in zip(ours, mid):
        before = img.reshape(-1, 3).astype(np.float64) @ YIQ.T
        for v in seq:
            after = v.reshape(-1, 3).astype(np.float64) @ YIQ.T
            assert np.abs(after[:, 0] - before[:, 0]).max() <= 1.0
            r0, r1 = np.hypot(*before[:, 1:].T), np.hypot(*after[:, 1:].T)
            assert np.abs(r1 - r0).max() <= 1.5
            angle = np.angle((after[:, 1] + 1j * after[:, 2]) * np.conj(before[:, 1] + 1j * before[:, 2]))
            big = r0 > 10
            assert np.abs(angle[big]).max() <= 2 * np.pi * 0.1 + 0.05  # within ±36°
            turned += np.median(np.abs(angle[big])) > 0.05
    assert turned > len(IMAGES) * 6 // 2  # views draw their own angle


def _pixels(x: torch.Tensor, cfg: PipelineConfig) -> torch.Tensor:
    """Normalised [.., 3, H, W] back to 0..255 values."""
    mean = torch.tensor(cfg.mean).view(3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(3, 1, 1) * 255
    return (x * std + mean).round()


def test_each_view_gets_its_own_steps(sample_shards) -> None:
    """Views are grouped across outputs by probabilities; each output's views land back in place."""
    plain = {"jitter_p": 0.0, "grayscale_p": 0.0, "global_size": 32, "local_size": 16, "num_local": 2}
    cfg = PipelineConfig(**plain, blur_p=(1.0, 0.0, 0.0), blur_sigma=(2.0, 2.0), solarize_p=0.0)
    b = next(build_loader(cfg, sample_shards, batch_size=4, device="cpu").iter_epoch(0))
    for name in ("past", "future"):  # view 1 blurred, view 2 not: the same crop, smoother
        x = b[name]
        variation = (x[..., 1:] - x[..., :-1]).abs().flatten(2).mean(-1)  # [B, 2]
        assert (variation[:, 0] < 0.8 * variation[:, 1]).all()
    cfg = PipelineConfig(**plain, blur_p=(0.0, 0.0, 0.0), solarize_p=1.0)
    b = next(build_loader(cfg, sample_shards, batch_size=4, device="cpu").iter_epoch(0))
    for name in ("past", "future"):  # no blur: view 2 is exactly view 1 solarized
        first, second = _pixels(b[name][:, 0], cfg), _pixels(b[name][:, 1], cfg)
        assert torch.equal(second, torch.where(first >= 128, 255 - first, first))
