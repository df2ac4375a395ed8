"""The trainer: one step on a synthetic batch, CLI errors, and real CPU runs on the sample shards
(30 steps with a falling loss, kill -9 and resume, two gloo processes in sync)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import list_checkpoints, load_teacher_backbone
from tools.bench_train import synthetic_batch
from tools.config import load_config
from tools.train import RunConfig, build_state, main, setup_distributed, train_step

ROOT = Path(__file__).resolve().parents[1]
PRESET = str(ROOT / "configs" / "tcore_tiny_cpu.yaml")
COMMON = ["train.batch_size_per_gpu=4", "train.log_every=1", "train.max_steps=30"]
REQUIRED = {"step", "loss", "loss_dino", "loss_koleo", "loss_pt", "loss_ft", "loss_pf", "lr", "samples_per_s",
            "data_wait", "wd", "momentum", "teacher_temp", "memory_gb"}


def _records(out: Path) -> dict[int, dict]:
    """metrics.jsonl by step (a step logged twice keeps its last record)."""
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in recs}


def test_one_step_moves_student_teacher_and_centres():
    cfg = load_config(RunConfig, PRESET, ["train.batch_size_per_gpu=4"])
    st = build_state(cfg, setup_distributed("cpu"), iters_per_epoch=20)
    batch = synthetic_batch(4, cfg.pipeline.num_local, cfg.pipeline.global_size, cfg.pipeline.local_size)
    before = [p.clone() for p in st.student.parameters()]
    t_before = [p.clone() for p in st.teacher.parameters()]
    out = train_step(st, batch, step=10)  # past warm-up start, so lr > 0
    assert all(torch.isfinite(v) for v in out.values())
    changed = sum(not torch.equal(a, b) for a, b in zip(before, st.student.parameters()))
    assert changed > len(before) // 2
    assert any(not torch.equal(a, b) for a, b in zip(t_before, st.teacher.parameters()))
    assert st.teacher.cls_centre.abs().sum() > 0
    assert all(p.grad is None for p in st.teacher.parameters())
    # the frozen prototype layer (first quarter epoch = 5 steps) stays put at step 0
    w = st.student.dino_head.last_layer.weight_v.clone()
    train_step(st, batch, step=0)
    assert torch.equal(w, st.student.dino_head.last_layer.weight_v)


def test_cli_rejects_bad_override(tmp_path, capsys):
    code = main(["--shards", str(tmp_path), "--config", PRESET, "train.no_such_key=1"])
    assert code == 2 and "train.no_such_key" in capsys.readouterr().err
    code = main(["--shards", str(tmp_path / "missing"), "--config", PRESET])
    assert code == 2 and "missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def straight_run(sample_shards, tmp_path_factory) -> Path:
    """30 uninterrupted steps on the sample shards, logging every step."""
    out = tmp_path_factory.mktemp("straight")
    assert main(["--shards", str(sample_shards), "--config", PRESET, "--out", str(out), *COMMON]) == 0
    return out


@pytest.mark.slow
def test_30_step_cpu_run_loss_falls(straight_run):
    recs = _records(straight_run)
    assert sorted(recs) == list(range(1, 31))
    assert set(recs[30]) >= REQUIRED
    losses = [recs[s]["loss"] for s in range(1, 31)]
    # thirds of the run: a 5-step window moves by ~0.3 between runs that differ only in float order
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    for name in ("teacher.pth", "loss_curves.png", "config.yaml", "summary.json"):
        assert (straight_run / name).is_file(), name
    assert any((straight_run / "tb").iterdir())
    assert len(list_checkpoints(straight_run / "checkpoints")) <= 2  # keep_checkpoints in the preset
    teacher = load_teacher_backbone(straight_run / "teacher.pth")
    assert teacher.get_patch_tokens(torch.zeros(1, 3, 64, 96)).shape == (1, 4, 6, 128)


@pytest.mark.slow
def test_kill_and_resume_matches_straight_run(straight_run, sample_shards, tmp_path):
    out = tmp_path / "killed"
    args = ["--shards", str(sample_shards), "--config", PRESET, "--out", str(out), *COMMON,
            "train.checkpoint_every_steps=5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tools.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900  # generous: a loaded machine may take minutes to reach step 15
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name >= "ckpt_000000015.pth" for p in list_checkpoints(out / "checkpoints")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    assert list_checkpoints(out / "checkpoints"), "no checkpoint after 15 minutes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = int(list_checkpoints(out / "checkpoints")[-1].stem.split("_")[1])
    assert 15 <= resumed_from < 30
    assert main(args) == 0
    straight, resumed = _records(straight_run), _records(out)
    for step in range(resumed_from + 1, 31):
        for key in ("loss", "loss_dino", "loss_koleo", "loss_pt", "loss_ft", "loss_pf", "lr"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-5, abs=1e-7), (step, key)


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(sample_shards, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tools.train", "--shards", str(sample_shards), "--config", PRESET, "--out", str(out),
           "train.device=cpu", "train.batch_size_per_gpu=4", "train.max_steps=4", "train.log_every=2",
           "train.tensorboard=false"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    a, b = summary["param_checksums"]
    assert a == b  # identical student parameters on both ranks after 4 DDP steps
    assert sorted(_records(out)) == [2, 4] and (out / "teacher.pth").is_file()
    assert "on 2 x cpu (train.device=cpu)" in res.stdout
