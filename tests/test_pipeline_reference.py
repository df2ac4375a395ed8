"""The reference loaders (webdataset+PIL, PyAV over mp4, FFCV) against the DALI loader."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.dataset import open_split
from pipeline.loader import build_loader
from pipeline.reference import ReferenceLoader, worker_tars
from pipeline.sampling import sandwich_ranges
from tests.test_pipeline_sampling import check_sandwich

CFG = {"global_size": 16, "local_size": 16, "num_local": 1}


def _triplets(batches) -> np.ndarray:
    """[n, 4] rows of (T, past, current, future)."""
    rows = [np.column_stack([b["num_frames"].numpy(), b["frame_idx"].numpy()]) for b in batches]
    return np.concatenate(rows)


def _position_stats(rows: np.ndarray) -> tuple[float, float]:
    """Mean of the current frame's position in its range and of the gaps' position in theirs (0..1)."""
    cur, gaps = [], []
    for t, p, c, _f in rows:
        c_lo, c_hi, g_lo, g_hi = sandwich_ranges(int(t))
        cur.append((c - c_lo + 0.5) / (c_hi - c_lo + 1))
        gaps.append((c - p - g_lo + 0.5) / (g_hi - g_lo + 1))
    return float(np.mean(cur)), float(np.mean(gaps))


def test_loaders_agree_on_sampling(sample_shards, sample_root) -> None:
    split = open_split(sample_shards, "train")
    found = {}
    for mode in ("whole", "range"):
        cfg = PipelineConfig(**CFG, read_mode=mode, repeat=8)
        found[f"dali-{mode}"] = _triplets(build_loader(cfg, sample_shards, batch_size=6, device="cpu").iter_epoch(0))
    cfg = PipelineConfig(**CFG, repeat=8)
    found["torch"] = _triplets(ReferenceLoader("torch", cfg, split, batch_size=6, num_workers=0).iter_epoch(0))
    mp4 = list(ReferenceLoader("mp4", PipelineConfig(**CFG, repeat=2), split, batch_size=6, num_workers=0,
                               root=sample_root).iter_epoch(0))
    found["mp4"] = _triplets(mp4)
    assert all(int(d) >= 1 for b in mp4 for d in b["decoded"])
    for name, rows in found.items():
        assert len(rows) >= 36, name
        for t, p, c, f in rows:
            check_sandwich(int(p), int(c), int(f), int(t))
        cur, gap = _position_stats(rows)
        # uniform draws put both means at 0.5; sampling noise with >= 36 draws is ~0.05
        assert abs(cur - 0.5) < 0.15 and abs(gap - 0.5) < 0.15, (name, cur, gap)
    # the shard loaders see the same frame counts (the same clips); mp4 sees the source's
    assert set(found["torch"][:, 0]) == set(found["dali-whole"][:, 0]) == set(found["dali-range"][:, 0])
    assert found["mp4"][:, 0].min() > found["torch"][:, 0].max()


def test_reference_outputs_match_dali_shapes(sample_shards) -> None:
    cfg = PipelineConfig(**CFG)
    split = open_split(sample_shards, "train")
    ref = next(ReferenceLoader("torch", cfg, split, batch_size=3, num_workers=0).iter_epoch(0))
    dali = next(build_loader(cfg, sample_shards, batch_size=3, device="cpu").iter_epoch(0))
    for name in ("current_global", "current_local", "past", "future", "frame_idx", "num_frames", "label"):
        assert ref[name].shape == dali[name].shape and ref[name].dtype == dali[name].dtype, name
    assert len(ref["key"]) == 3 and ref["decoded"].tolist() == [3, 3, 3]
    for name in ("current_global", "past"):  # both normalise the same way: similar value ranges
        assert abs(ref[name].mean() - dali[name].mean()) < 0.5


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="optional extra ffcv not installed")
def test_ffcv_peer(sample_shards, tmp_path) -> None:
    from pipeline.ffcv_ref import FfcvLoader, write_triplets

    cfg = PipelineConfig(**CFG, workload="simple")
    split = open_split(sample_shards, "train")
    path = write_triplets(split, cfg, tmp_path / "t.beton", draws=1, workers=1)
    batches = list(FfcvLoader(path, cfg, batch_size=6, num_workers=1).iter_epoch(0))
    assert len(batches) == 3
    assert batches[0]["past"].shape == (6, 1, 3, 16, 16) and batches[0]["past"].dtype == torch.float32
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == sorted(s.label_id for s in split.samples)


def test_torch_workers_share_uneven_shards(sample_shards) -> None:
    """Shards of unequal sizes are dealt by samples, so no DataLoader worker runs out early."""
    split = open_split(sample_shards, "train", verify_offsets=False)
    sizes = {t: sum(r.tar == t for r in split.samples) for t in split.tars}
    assert max(sizes.values()) > min(sizes.values())  # the case this guards
    cfg = PipelineConfig(repeat=6)
    for workers in (2, 3):
        dealt = worker_tars(split, cfg, epoch=1, workers=workers)
        assert sorted(t for d in dealt for t in d) == sorted(split.tars * cfg.repeat)  # each pass once
        loads = [sum(sizes[t] for t in d) for d in dealt]
        assert max(loads) - min(loads) <= max(sizes.values())
    assert worker_tars(split, cfg, 1, 2) == worker_tars(split, cfg, 1, 2)
    assert worker_tars(split, cfg, 1, 2) != worker_tars(split, cfg, 2, 2)


@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_centred_context_crop_matches_the_reference(sample_shards, interp: str) -> None:
    """With photometry off, DALI's past/future views are the reference's centred crop, same geometry."""
    import io

    from PIL import Image

    from pipeline.torch_views import TorchViews

    plain = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": (0.0, 0.0, 0.0), "solarize_p": 0.0}
    cfg = PipelineConfig(**{**CFG, "global_size": 48, **plain, "context_interp": interp})
    split = open_split(sample_shards, "train")
    refs = {r.key: r for r in split.samples}
    batch = next(build_loader(cfg, sample_shards, batch_size=4, device="cpu").iter_epoch(0))
    views = TorchViews(cfg)
    for b, key in enumerate(batch["key"]):
        jpegs = refs[key].frame_jpegs()
        for name, column in (("past", 0), ("future", 2)):
            frame = Image.open(io.BytesIO(jpegs[int(batch["frame_idx"][b, column])])).convert("RGB")
            want = views.context_t[0](views.centred(frame))  # photometry off: tensor, float, normalise
            got = batch[name][b]
            assert torch.equal(got[0], got[1])  # both views of the frame, untouched
            diff = (got[0] - want).abs() * 255 * 0.226  # back to 0..255 levels (std ~0.226)
            assert float(diff.mean()) < 2.0 and float(diff.max()) < 40, (key, name, float(diff.mean()))
