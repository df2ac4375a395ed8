"""The trainer on the clip methods: 30-step CPU runs that lower the loss and export the backbone,
two gloo processes in sync, and the method/workload check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.video3d import load_exported
from tools.train import main

ROOT = Path(__file__).resolve().parents[1]
TERMS = {"dualvar": {"loss_clip", "loss_tc", "loss_rank_c1", "loss_rank_c3"},
         "cstp": {"loss_byol", "loss_spatial", "loss_temporal", "loss_pb1", "loss_pb2", "loss_rot1", "loss_rot2"},
         "localglobal": {"loss_instance", "loss_region", "loss_mi", "loss_order"}}


def preset(method: str) -> str:
    return str(ROOT / "configs" / f"{method}_tiny_cpu.yaml")


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def thirty_steps(clip_shards, tmp_path_factory):
    """``get(method)``: the output directory of one 30-step tiny run (made once per module)."""
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = tmp_path_factory.mktemp(method)
            assert main(["--shards", str(clip_shards), "--config", preset(method), "--out", str(out),
                         "train.max_steps=30", "train.log_every=1", "train.tensorboard=false"]) == 0
            done[method] = out
        return done[method]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dualvar", "cstp", "localglobal"])
def test_30_step_cpu_run_lowers_the_loss_and_exports(thirty_steps, method):
    out = thirty_steps(method)
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, 31))
    assert TERMS[method] | {"loss", "lr"} <= set(recs[0])
    loss = [r["loss"] for r in recs]
    assert all(torch.isfinite(torch.tensor(loss)))
    assert sum(loss[-10:]) / 10 < 0.97 * sum(loss[:10]) / 10, loss
    export = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    assert export["method"] == method and export["arch"] == "tiny"
    net = load_exported(export)
    assert net(torch.zeros(1, 3, 8, 32, 32)).shape == (1, net.feature_dim)
    ckpt = torch.load(sorted((out / "checkpoints").glob("*.pth"))[-1], map_location="cpu", weights_only=False)
    assert ckpt["method"] == method and ckpt["step"] == 30


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(clip_shards, tmp_path):
    """CSTP (EMA target, BN heads) under DDP on gloo: identical student parameters after 4 steps."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tools.train", "--shards", str(clip_shards), "--config", preset("cstp"), "--out", str(out),
           "train.device=cpu", "train.batch_size_per_gpu=2", "train.max_steps=4", "train.log_every=2",
           "train.tensorboard=false", "cstp.sync_bn=true"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    a, b = summary["param_checksums"]
    assert a == b
    assert [r["step"] for r in records(out)] == [2, 4] and (out / "backbone.pth").is_file()
    assert "cstp.sync_bn needs CUDA" in res.stdout + res.stderr


def test_method_and_workload_must_agree(clip_shards, capsys):
    code = main(["--shards", str(clip_shards), "--config", preset("cstp"), "pipeline.workload=dualvar"])
    assert code == 2 and "pipeline.workload=cstp" in capsys.readouterr().err
    code = main(["--shards", str(clip_shards), "--config", preset("localglobal"), "localglobal.num_local=3"])
    assert code == 2 and "num_local" in capsys.readouterr().err
    code = main(["--shards", str(clip_shards), "method=nope"])
    assert code == 2 and "method" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_continues_exactly(thirty_steps, clip_shards, tmp_path):
    """CSTP (EMA target, BN statistics, SGD momentum) resumed from the 30-step run's step-20
    checkpoint: steps 21-30 equal the uninterrupted run's."""
    straight = thirty_steps("cstp")
    ckpt = next(p for p in (straight / "checkpoints").glob("*.pth") if int(p.stem.split("_")[1]) == 20)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ckpt, tmp_path / "checkpoints" / ckpt.name)
    assert main(["--shards", str(clip_shards), "--config", preset("cstp"), "--out", str(tmp_path),
                 "train.max_steps=30", "train.log_every=1", "train.tensorboard=false"]) == 0
    want = {r["step"]: r for r in records(straight)}
    got = {r["step"]: r for r in records(tmp_path)}
    assert sorted(got) == list(range(21, 31))
    for step in got:
        for key in TERMS["cstp"] | {"loss", "lr", "momentum"}:
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
