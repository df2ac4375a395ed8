"""Training checkpoints: atomic writes, keep the newest K, fall back when the newest is corrupt."""

from __future__ import annotations

import torch

from model.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint


def _state(step: int) -> dict:
    return {"step": step, "student": {"w": torch.full((2,), float(step))}, "teacher": {}, "optimizer": {},
            "centres": {}}


def test_keep_last_k_and_no_temporaries(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000030.pth", "ckpt_000000040.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000030.pth", "ckpt_000000040.pth"]
    assert load_latest_checkpoint(tmp_path)["step"] == 40


def test_corrupt_latest_falls_back_with_message(tmp_path):
    save_checkpoint(_state(10), tmp_path, 10, keep=3)
    save_checkpoint(_state(20), tmp_path, 20, keep=3)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a partial write
    messages: list[str] = []
    state = load_latest_checkpoint(tmp_path, log=messages.append)
    assert state["step"] == 10 and torch.equal(state["student"]["w"], torch.full((2,), 10.0))
    assert len(messages) == 1 and "ckpt_000000020.pth" in messages[0] and "previous" in messages[0]


def test_incomplete_checkpoint_is_skipped(tmp_path):
    save_checkpoint(_state(5), tmp_path, 5, keep=3)
    torch.save({"step": 6}, tmp_path / "ckpt_000000006.pth")  # readable but missing entries
    messages: list[str] = []
    assert load_latest_checkpoint(tmp_path, log=messages.append)["step"] == 5
    assert "missing entries" in messages[0]
    assert load_latest_checkpoint(tmp_path / "nothing") is None
