"""Label propagation: the protocol's mechanics on tiny hand-made features, then whole DAVIS-format
sequences (real JPEG + palette PNG files) with a perfect and a random feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import synthetic
from evaluation.config import EvalConfig, PropagationConfig, input_size, resolve_device
from evaluation.datasets import load_frames, read_davis, read_index_png
from evaluation.propagation import (
    MASKED,
    context_indices,
    extract_features,
    propagate,
    radius_bias,
)
from evaluation.runner import run_davis, score_davis

CPU = torch.device("cpu")


def run(feats, first, **kw):
    cfg = PropagationConfig(**({"topk": 1} | kw))
    return {t: soft.clone() for t, soft in propagate(feats, first, cfg)}


def test_context_indices_repeat_first_frame():
    assert context_indices(1, 4) == [0, 0, 0, 0]
    assert context_indices(3, 5) == [0, 0, 0, 1, 2]
    assert context_indices(10, 3) == [7, 8, 9]


def test_radius_bias_is_strict_euclidean():
    bias = radius_bias(5, 5, 2.0, CPU)
    assert bias.shape == (25, 25)
    assert bias[0, 1] == 0 and bias[0, 5] == 0 and bias[0, 6] == 0  # distances 1, 1, sqrt(2)
    assert bias[0, 2] == MASKED and bias[0, 10] == MASKED  # distance 2 is outside (strict <)


def test_identity_features_copy_labels():
    T, h, w = 5, 3, 4
    feats = torch.eye(h * w).reshape(1, h, w, h * w).repeat(T, 1, 1, 1)  # each patch matches itself
    first = torch.rand(2, h, w)
    out = run(feats, first)
    assert sorted(out) == [1, 2, 3, 4]
    for soft in out.values():
        torch.testing.assert_close(soft, first)


def test_radius_limits_short_term_but_not_long_memory():
    # 1 x 10 grid; frame 0 has the distinctive feature at patch 0 (label 1), frame 1 at patch 9
    feats = torch.zeros(2, 1, 10, 2)
    feats[..., 1] = 1.0
    feats[0, 0, 0] = torch.tensor([1.0, 0.0])
    feats[1, 0, 9] = torch.tensor([1.0, 0.0])
    first = torch.zeros(2, 1, 10)
    first[0] = 1.0
    first[:, 0, 0] = torch.tensor([0.0, 1.0])
    short_only = run(feats, first, context=1, radius=3.0, long_memory=False)[1]
    assert short_only[:, 0, 9].argmax() == 0  # the match is 9 patches away: excluded
    with_long = run(feats, first, context=1, radius=3.0, long_memory=True)[1]
    assert with_long[:, 0, 9].argmax() == 1  # the first frame is searched without the radius


def test_topk_softmax_weights_and_temperature():
    # one query; keys with cosine 1.0 (label a) and 0.6 (label b); top-2 softmax at temperature tau
    feats = torch.zeros(2, 1, 2, 2)
    feats[0, 0, 0] = torch.tensor([1.0, 0.0])
    feats[0, 0, 1] = torch.tensor([0.6, 0.8])
    feats[1, 0, 0] = torch.tensor([1.0, 0.0])
    feats[1, 0, 1] = torch.tensor([0.0, 1.0])
    first = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # patch 0 -> class 0, patch 1 -> class 1
    for tau in (0.7, 0.07):
        soft = run(feats, first, topk=2, context=1, long_memory=False, temperature=tau)[1]
        w0 = 1 / (1 + np.exp(-(1.0 - 0.6) / tau))
        assert soft[0, 0, 0].item() == pytest.approx(w0, rel=1e-5)


def test_extract_features_batches_and_normalises():
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8, generator=gen) for _ in range(5)]
    proj = torch.randn(3, 6, generator=gen)

    def fn(x):
        return torch.nn.functional.avg_pool2d(x, 16).permute(0, 2, 3, 1) @ proj

    a = extract_features(fn, frames, (32, 48), batch_size=2)
    b = extract_features(fn, frames, (32, 48), batch_size=5)
    assert a.shape == (5, 2, 3, 6)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5, 2, 3))
    with pytest.raises(ValueError, match="feature function"):
        extract_features(lambda x: x.mean(1), frames, (32, 48), batch_size=2)


def test_protocol_geometry_and_device():
    assert input_size("davis", 480, 854) == (480, 880)
    assert input_size("jhmdb", 240, 320) == (320, 320)
    assert input_size("vip", 720, 1280) == (448, 880)  # 495 floored to a multiple of 64
    assert input_size("vip", 1280, 720) == (880, 448)
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.fixture(scope="module")
def davis_snapped(tmp_path_factory) -> Path:
    return synthetic.write_davis(tmp_path_factory.mktemp("davis") / "DAVIS", n_seq=2, T=8, snap=8)


def test_generated_sequences_are_real_files(davis_snapped: Path):
    videos = read_davis(davis_snapped)
    assert [v.name for v in videos] == ["synth0", "synth1"]
    frames = load_frames(videos[0].frames, CPU)
    assert frames[0].shape == (3, 128, 224) and frames[0].dtype == torch.uint8
    mask = read_index_png(videos[0].masks[3])
    assert set(np.unique(mask)) == {0, 1, 2}


@pytest.mark.parametrize("kind", ["perfect", "random"])
def test_davis_perfect_vs_random_feature(davis_snapped: Path, tmp_path: Path, kind: str):
    videos = read_davis(davis_snapped)
    fn = synthetic.colour_feature(synthetic.OBJECT_RGB) if kind == "perfect" else synthetic.random_feature()
    cfg = EvalConfig(task="davis", root=str(davis_snapped), input_size=(128, 224))
    timing = run_davis(videos, fn, cfg, CPU, tmp_path)
    assert timing["frames"] == 16 and timing["model_fps"] > 0
    summary, header, rows, _ = score_davis(videos, tmp_path / "results", tmp_path, 2)
    assert header == ["object", "J", "F"]
    assert [r[0] for r in rows] == ["synth0_1", "synth0_2", "synth1_1", "synth1_2"]
    if kind == "perfect":
        assert summary["J&F-Mean"] > 0.97 and summary["J-Recall"] == 1.0
    else:
        assert summary["J&F-Mean"] < 0.3
    assert len(list((tmp_path / "overlays" / "synth0").glob("*.png"))) == 2


def test_bf16_features_stay_close():
    gen = torch.Generator().manual_seed(1)
    frames = [torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8, generator=gen) for _ in range(3)]
    lin = torch.nn.Linear(3, 8)

    def fn(x):
        return lin(torch.nn.functional.avg_pool2d(x, 16).permute(0, 2, 3, 1))

    a = extract_features(fn, frames, (32, 32), batch_size=3)
    b = extract_features(fn, frames, (32, 32), batch_size=3, bf16=True)
    assert b.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=3e-2, rtol=0)
