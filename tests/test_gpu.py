"""The GPU path (marked ``gpu``: skipped where CUDA cannot start): the training step never waits
for the device, the masks and checkpoint snapshots cross over correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointWriter, read_checkpoint
from model.masks import MaskMaker, host_masks, make_masks
from tools.bench_train import synthetic_batch
from tools.config import load_config
from tools.train import RunConfig, build_state, setup_distributed, train_step

pytestmark = pytest.mark.gpu
VITS = str(Path(__file__).resolve().parents[1] / "configs" / "tcore_vits16_k400.yaml")
RULE = dict(prob=0.5, ratio_min_max=(0.1, 0.5), min_block=4, max_block_ratio=0.5, aspect=(0.3, 1 / 0.3))


@pytest.mark.parametrize("precision, centering", [
    ("bf16", "centre"), ("fp16", "centre"),
    ("bf16", "sinkhorn"),
])
def test_train_step_has_no_host_synchronisation(precision, centering):
    """ViT-S steps on a device batch under ``set_sync_debug_mode("error")``: any ``.item()``,
    blocking copy, ``nonzero`` or GradScaler check in the step raises."""
    cfg = load_config(RunConfig, VITS, [f"train.precision={precision}", "train.device=cuda",
                                        "train.batch_size_per_gpu=8", f"model.centering={centering}"])
    st = build_state(cfg, setup_distributed("cuda"), iters_per_epoch=100)
    batch = synthetic_batch(8, cfg.pipeline.num_local, cfg.pipeline.global_size, cfg.pipeline.local_size,
                            device=st.dist.device)
    batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
             for k, v in batch.items()}  # as the loader delivers them (pipeline.dtype)
    try:
        for step in (10, 11):  # warm-up: optimizer state, cuBLAS handles, scaler, allocator
            train_step(st, batch, step)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = [train_step(st, batch, step) for step in (12, 13, 14)]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        st.masks.close()
    assert all(bool(torch.isfinite(v)) for out in outs for v in out.values())
    assert all(v.device == st.dist.device for v in outs[-1].values())


def test_masks_cross_over_unchanged():
    dev = torch.device("cuda", torch.cuda.current_device())
    maker = MaskMaker(lambda c, g, seed: host_masks(c, g, seed, **RULE), lambda step: 100 + step, dev)
    try:
        got = [maker.get(step, 64, (14, 14)) for step in range(3)]
    finally:
        maker.close()
    for step, mb in enumerate(got):
        ref = make_masks(64, (14, 14), 100 + step, **RULE)
        assert all(x.device == dev and torch.equal(x.cpu(), y) for x, y in zip(mb, ref))


def test_checkpoint_snapshot_of_device_tensors(tmp_path):
    w = torch.zeros(1_000_000, device="cuda")
    writer = CheckpointWriter(tmp_path, keep=1)
    try:
        writer.save({"step": 1, "student": {"w": w}, "teacher": {}, "optimizer": {}, "centres": {}}, 1)
        w.fill_(3.0)  # the next step updates the parameters in place
        path = writer.wait()
    finally:
        writer.close()
    saved = read_checkpoint(path)["student"]["w"]
    assert saved.device.type == "cpu" and float(saved.abs().max()) == 0.0
