"""The clip workloads of the DALI graph against the numpy rules of ``pipeline/clips.py``.

For each workload and read mode, a batch from the loader is checked against an independent
reference built from the same draws: the phase-1 rule (``<rule>_clips`` on ``<rule>_draws`` of the
batch's FRAMES generator) gives the frames, boxes, flags and labels; the reference clips are the
stored JPEGs decoded by PIL, cut at those boxes, resized (bilinear, antialiased), flipped and
turned, and normalised. Photometric augmentation is off, so the pixels must agree up to the two
resamplers' rounding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.clip_plan import layout_of
from pipeline.clips import (
    CSTPSampling,
    DualVarSampling,
    LocalGlobalSampling,
    cstp_clips,
    cstp_draws,
    dualvar_clips,
    dualvar_draws,
    localglobal_clips,
    localglobal_draws,
)
from pipeline.config import PipelineConfig
from pipeline.loader import build_loader
from pipeline.params import FRAMES, batch_rng

SIZE, LOCAL = 32, 24
BATCH = 4


def config(workload: str, mode: str, **kw) -> PipelineConfig:
    return PipelineConfig(workload=workload, read_mode=mode, clip_size=SIZE, local_clip_size=LOCAL, jitter_p=0.0,
                          grayscale_p=0.0, clip_blur_p=0.0, clip_tilt=0.0, dualvar=DualVarSampling(frames=4),
                          cstp=CSTPSampling(frames=4), num_threads=1, shuffle_buffer=8,
                          localglobal=LocalGlobalSampling(global_frames=4, local_frames=4, num_local=2), **kw)


def reference(cfg: PipelineConfig, t, h, w, fps) -> tuple[list, dict]:
    """Per clip (frames [B, F], pixel boxes [B, 4], flip [B], quarter turns [B]) and the labels,
    from the phase-1 rule on batch (epoch 0, batch 0) of rank 0."""
    rng = batch_rng((cfg.seed, 0), 0, 0, FRAMES)
    b = len(t)
    no = np.zeros(b, bool)
    zero = np.zeros(b, np.int64)
    if cfg.workload == "dualvar":
        c = dualvar_clips(dualvar_draws(rng, b, cfg.dualvar), t, h, w, fps, cfg.dualvar)
        clips = [(c["frames"][:, k], c["boxes"][:, k], no, zero) for k in range(3)]
        return clips, {"perm": c["perm"]}
    if cfg.workload == "cstp":
        c = cstp_clips(cstp_draws(rng, b, cfg.cstp), t, h, w, fps, cfg.cstp)
        clips = [(c["frames"][:, k], c["boxes"][:, k], c["flip"][:, k], c["rot"][:, k]) for k in range(2)]
        return clips, {n: c[n] for n in ("spatial", "temporal", "pb", "rot")}
    lg = cfg.localglobal
    c = localglobal_clips(localglobal_draws(rng, b, lg), t, h, w, fps, lg)
    clips = [(c["global_frames"], c["global_box"], c["flip"], zero)]
    clips += [(c["local_frames"][:, i], c["local_box_px"][:, i], c["flip"], zero) for i in range(lg.num_local)]
    return clips, {n: c[n] for n in ("local_boxes", "local_times", "order")}


def render(jpegs: list[bytes], frames, box, flip: bool, turns: int, size: int, cfg: PipelineConfig) -> np.ndarray:
    """[3, F, size, size]: PIL's decode, crop + bilinear resize, flip, counter-clockwise turns, normalise."""
    mean, std = 255 * np.array(cfg.mean), 255 * np.array(cfg.std)
    out = []
    for f in frames:
        img = Image.open(io.BytesIO(jpegs[f])).convert("RGB")
        a = np.asarray(img.resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in box)), np.float64)
        a = np.rot90(a[:, ::-1] if flip else a, int(turns))
        out.append((a - mean) / std)
    return np.stack(out).transpose(3, 0, 1, 2)


def delivered(batch: dict, lay, k: int, i: int) -> np.ndarray:
    name = next(n for n, ks in lay.outputs.items() if k in ks)
    x = batch[name][i]
    return (x if name == "global" else x[lay.outputs[name].index(k)]).numpy()


@pytest.mark.parametrize("mode", ["range", "whole"])
@pytest.mark.parametrize("workload", ["dualvar", "cstp", "localglobal"])
def test_dali_clips_equal_the_numpy_rules(clip_shards, workload, mode):
    cfg = config(workload, mode)
    loader = build_loader(cfg, clip_shards, batch_size=BATCH, device="cpu")
    batch = next(loader.iter_epoch(0))
    lay = layout_of(cfg)
    by_key = {s.key: s for s in loader.split.samples}
    refs = [by_key[k] for k in batch["key"]]
    t, h, w, fps = (np.array([getattr(s, a) for s in refs]) for a in ("num_frames", "height", "width", "fps"))
    clips, labels = reference(cfg, t, h, w, fps)
    for name, want in labels.items():  # labels: exactly the rule's
        np.testing.assert_allclose(batch[name].numpy(), want, rtol=0, atol=1e-6, err_msg=name)
        assert batch[name].device.type == "cpu"
    # each decoded slot is a frame some clip delivers, and the clips read their slots
    slots = batch["frame_idx"].numpy()
    assert slots.shape == (BATCH, lay.slots) and (batch["decoded"] == lay.slots).all()
    for k, (frames, box, flip, turns) in enumerate(clips):
        np.testing.assert_array_equal(slots[:, list(lay.clips[k])], frames, err_msg=f"clip {k} frames")
        for i, s in enumerate(refs):
            got = delivered(batch, lay, k, i)
            want = render(s.frame_jpegs(), frames[i], box[i], bool(flip[i]), turns[i], lay.sizes[k], cfg)
            err = np.abs(got - want).mean() * 255 * np.mean(cfg.std)
            assert err < 1.0, (k, i, err)  # grey levels; a wrong frame, box or flip is off by several


def test_clip_shapes_labels_and_decoded_per_delivered(clip_shards):
    """Contract shapes with photometric augmentation on; decoded/delivered = 1 except DualVar's
    c3, which reuses c1's decoded frames (2/3)."""
    expect = {"dualvar": ({"clips": (BATCH, 3, 3, 4, SIZE, SIZE), "perm": (BATCH, 2)}, 2 / 3),
              "cstp": ({"clips": (BATCH, 2, 3, 4, SIZE, SIZE), "rot": (BATCH, 2), "pb": (BATCH,)}, 1.0),
              "localglobal": ({"global": (BATCH, 3, 4, SIZE, SIZE), "local": (BATCH, 2, 3, 4, LOCAL, LOCAL),
                               "local_boxes": (BATCH, 2, 4), "local_times": (BATCH, 2, 2)}, 1.0)}
    for workload, (shapes, ratio) in expect.items():
        cfg = config(workload, "range", dtype="bfloat16")
        cfg.jitter_p, cfg.grayscale_p, cfg.clip_blur_p, cfg.clip_tilt = 0.8, 0.2, 0.5, 10.0
        batch = next(build_loader(cfg, clip_shards, batch_size=BATCH, device="cpu").iter_epoch(0))
        for name, shape in shapes.items():
            assert tuple(batch[name].shape) == shape, (workload, name)
        clip = batch["clips" if "clips" in batch else "global"]
        assert clip.dtype == torch.bfloat16 and torch.isfinite(clip.float()).all()
        lay = layout_of(cfg)
        assert batch["decoded"].sum().item() / (BATCH * lay.delivered_frames) == pytest.approx(ratio)


def test_clip_config_errors(clip_shards):
    with pytest.raises(ValueError, match="pipeline.workload"):
        PipelineConfig(workload="nope").validate()
    bad = config("dualvar", "range")
    bad.dualvar = DualVarSampling(frames=5)
    with pytest.raises(ValueError, match="pipeline.dualvar.frames"):
        build_loader(bad, clip_shards, batch_size=BATCH, device="cpu")
    with pytest.raises(ValueError, match="host"):
        build_loader(config("cstp", "range"), clip_shards, batch_size=BATCH, device="host")
