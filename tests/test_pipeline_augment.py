"""The device side's photometric steps, fed drawn parameters, against direct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types
from torchvision.transforms.v2 import functional as tvf

from pipeline.augment import blur, jitter, solarize
from pipeline.config import PipelineConfig
from pipeline.loader import build_loader
from pipeline.params import blur_taps, colour_draws, colour_maps, photometric_params, view_groups

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (24 + 4 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(4)]
B = len(IMAGES)


def _const(array: np.ndarray):
    return lambda: np.ascontiguousarray(array)


def _run(graph, images=IMAGES, **params: np.ndarray) -> list:
    """Run ``graph(image, **param nodes)``; each param is [B, ...] fed per sample, per-frame layout."""
    layouts = {1: "F", 2: "FC", 3: "FXY"}

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=7)
    def pipe():
        img = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
        nodes = {k: fn.external_source(source=_const(v), batch=True, layout=layouts[v.ndim - 1], dtype=types.FLOAT)
                 for k, v in params.items()}
        return graph(img, **nodes)

    p = pipe()
    p.build()
    return [[np.asarray(out[i]) for i in range(len(images))] for out in p.run()]


def _seq(img, n: int):
    return fn.stack(*[img] * n, axis_name="F")


def _blur_rows_cols(taps: np.ndarray) -> dict[str, np.ndarray]:
    return {"rows": taps[:, :, None].astype(np.float32), "cols": taps[..., None].astype(np.float32)}


@pytest.mark.parametrize("sigma", [0.3, 1.1, 2.0])
def test_ceil_3_sigma_window_matches_gaussian_blur(sigma: float) -> None:
    cfg = PipelineConfig(blur_sigma=(sigma, sigma), blur_kernel=0)
    taps = blur_taps(np.ones((B, 2), bool), np.full((B, 2), sigma), cfg)
    ours, ref = _run(lambda img, rows, cols: (blur(_seq(img, 2), rows, cols), fn.gaussian_blur(img, sigma=sigma)),
                     **_blur_rows_cols(taps))
    for seq, want in zip(ours, ref):
        for view in seq:  # DALI's own Gaussian, up to rounding
            assert np.abs(view.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("sigma", [0.5, 1.3, 2.0])
def test_nine_taps_match_torchvision_gaussian_blur(sigma: float) -> None:
    """blur_kernel=9 is torchvision's GaussianBlur(kernel_size=9) (the reference code's), reflect border."""
    cfg = PipelineConfig(blur_sigma=(sigma, sigma), blur_kernel=9)
    taps = blur_taps(np.ones((B, 1), bool), np.full((B, 1), sigma), cfg)
    assert taps.shape == (B, 1, 9)
    (ours,) = _run(lambda img, rows, cols: (blur(_seq(img, 1), rows, cols),), **_blur_rows_cols(taps))
    for seq, img in zip(ours, IMAGES):
        want = tvf.gaussian_blur(torch.from_numpy(img).permute(2, 0, 1), kernel_size=[9, 9], sigma=[sigma, sigma])
        assert np.abs(seq[0].astype(int) - want.permute(1, 2, 0).numpy().astype(int)).max() <= 1


def test_blur_coin_is_per_view_with_its_probability() -> None:
    """The reference code's probabilities (0.0, 0.9, 0.5): view 1 never blurred, view 2 90 %, locals 50 %."""
    cfg = PipelineConfig(blur_sigma=(1.5, 1.5), jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0)
    params = photometric_params(np.random.default_rng(2), 4000, cfg)
    groups = view_groups(cfg)
    assert [g.blur_p for g in groups] == [0.0, 0.9, 0.5] and "blur/0" not in params
    for i, p in ((1, 0.9), (2, 0.5)):
        identity = params[f"blur/{i}"][..., 4] == 1.0
        assert abs(identity.mean() - (1 - p)) < 0.02, i  # the views that draw no blur
    taps = params["blur/1"]
    identity = taps[..., 4] == 1.0
    assert 0 < identity.any(axis=1).mean() < 1 and not identity.all(axis=1).all()  # coins differ within samples
    (ours,) = _run(lambda img, rows, cols: (blur(_seq(img, 3), rows, cols),), **_blur_rows_cols(taps[:B]))
    for seq, img, ident in zip(ours, IMAGES, identity[:B]):
        for view, same in zip(seq, ident):
            assert np.array_equal(view, img) == bool(same)


def test_solarize_per_view() -> None:
    shift = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32) * (256.0 / 32767.0)
    (ours,) = _run(lambda img, shift: (solarize(_seq(img, 2), shift),), shift=shift)
    for seq, img, coins in zip(ours, IMAGES, shift > 0):
        solar = np.where(img >= 128, 255 - img, img)
        for view, coin in zip(seq, coins):
            assert np.array_equal(view, solar if coin else img)


YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _maps(cfg: PipelineConfig, n: int, seed: int = 3):
    d = colour_draws(np.random.default_rng(seed), B, n, cfg)
    m, offset = colour_maps(d, cfg.contrast_pivot)
    return d, {"m": m, "offset": offset}


@pytest.mark.parametrize("pivot", ["mean", "mid"])
def test_jitter_off_is_identity_and_grayscale_is_luma(pivot: str) -> None:
    _, off = _maps(PipelineConfig(jitter_p=0.0, grayscale_p=0.0, contrast_pivot=pivot), 3)
    _, gray = _maps(PipelineConfig(jitter_p=0.0, grayscale_p=1.0, contrast_pivot=pivot), 3)
    same, grey = _run(lambda img, m, offset, m2, offset2: (jitter(_seq(img, 3), m, offset, pivot),
                                                           jitter(_seq(img, 3), m2, offset2, pivot)),
                      m=off["m"], offset=off["offset"], m2=gray["m"], offset2=gray["offset"])
    for a, g, img in zip(same, grey, IMAGES):
        assert all(np.array_equal(v, img) for v in a)
        luma = np.clip(np.rint(img.astype(np.float64) @ YIQ[0]), 0, 255)
        for v in g:
            assert np.abs(v.astype(int) - luma[..., None]).max() <= 1  # R = G = B = luma, ±rounding


def test_jitter_hue_turns_chroma_and_keeps_luma() -> None:
    """Hue alone (b = c = s = 1) rotates YIQ chroma: luma and chroma length stay, the angle moves."""
    cfg = PipelineConfig(jitter_p=1.0, grayscale_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    _, p = _maps(cfg, 6)
    mid = [(96 + img // 4).astype(np.uint8) for img in IMAGES]  # no clamping after a hue turn
    (ours,) = _run(lambda img, m, offset: (jitter(_seq(img, 6), m, offset, "mean"),), images=mid, **p)
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
    assert turned > B * 6 // 2  # views draw their own angle


def _torchvision_chain(img: np.ndarray, d: dict, b: int, v: int) -> np.ndarray:
    """torchvision's ColorJitter steps (brightness, contrast, saturation; hue 0) in the drawn order."""
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    steps = {0: lambda x: tvf.adjust_brightness(x, float(d["brightness"][b, v])),
             1: lambda x: tvf.adjust_contrast(x, float(d["contrast"][b, v])),
             2: lambda x: tvf.adjust_saturation(x, float(d["saturation"][b, v])),
             3: lambda x: x}
    for op in d["order"][b, v]:
        x = steps[int(op)](x)
    return (x * 255).permute(1, 2, 0).numpy()


def test_colour_map_is_torchvision_in_a_random_order() -> None:
    """With contrast about the view's mean grey, the one affine map equals torchvision's steps
    applied one by one in each view's drawn order (images chosen so that no step clamps)."""
    cfg = PipelineConfig(jitter_p=1.0, grayscale_p=0.0, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0)
    n = 8
    d, p = _maps(cfg, n, seed=4)
    assert len({tuple(o) for o in d["order"].reshape(-1, 4)}) > 10  # orders do vary
    images = [(90 + img // 4).astype(np.uint8) for img in IMAGES]
    (ours,) = _run(lambda img, m, offset: (jitter(_seq(img, n), m, offset, "mean"),), images=images, **p)
    for b, (seq, img) in enumerate(zip(ours, images)):
        for v in range(n):
            want = _torchvision_chain(img, d, b, v)
            assert np.abs(seq[v].astype(np.float64) - want).max() <= 1.5, (b, v, d["order"][b, v])


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


def test_jitter_distribution_against_torchvision(sample_shards) -> None:
    """The README's comparison, small: the DALI jitter and torchvision's agree on per-channel
    means, luma and the spread of the hue shift; YIQ hue lowers HSV saturation (documented)."""
    from tools.jitter_compare import compare, shard_images

    found = compare(shard_images(str(sample_shards), 12, 48), PipelineConfig(jitter_p=1.0), draws=16)
    for k in ("mean_r", "mean_g", "mean_b", "luma"):
        (ma, sa), (mb, sb) = found[k]["torchvision"], found[k]["dali"]
        assert abs(ma - mb) < 4 and abs(sa - sb) < 0.15 * sa, (k, found[k])
    (_, sa), (_, sb) = found["hue_shift"]["torchvision"], found["hue_shift"]["dali"]
    assert abs(sa - sb) < 4, found["hue_shift"]
    assert found["saturation"]["dali"][0] < found["saturation"]["torchvision"][0]
