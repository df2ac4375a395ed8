"""Training checkpoints: atomic writes, keep the newest K, fall back when the newest is corrupt;
the background writer (snapshot, one write in flight, errors raised on the caller's thread)."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import (
    CheckpointWriteError,
    CheckpointWriter,
    list_checkpoints,
    load_latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    to_host,
)


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


def test_writer_snapshots_then_writes_in_the_background(tmp_path):
    big = torch.zeros(25_000_000)  # 100 MB: its write takes far longer than handing it over
    writer = CheckpointWriter(tmp_path, keep=2)
    try:
        writer.save({**_state(1), "student": {"w": big}}, 1)
        path = tmp_path / "ckpt_000000001.pth"
        assert not path.exists()  # save returned before the write was done (atomic: no partial file)
        big.fill_(7.0)  # training goes on updating the live tensors in place
        assert writer.wait() == path and path.is_file()
        assert float(read_checkpoint(path)["student"]["w"].max()) == 0.0  # the snapshot, not the live values
        for step in (2, 3):  # at most one write in flight: each save waits for the previous one
            writer.save(_state(step), step)
    finally:
        writer.close()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000002.pth", "ckpt_000000003.pth"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_writer_error_surfaces_on_the_callers_thread(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = CheckpointWriter(blocker / "checkpoints", keep=2)
    writer.save(_state(1), 1)  # returns: the failure happens in the writer thread
    with pytest.raises(CheckpointWriteError, match="ckpt_000000001.pth could not be written"):
        writer.save(_state(2), 2)  # ... and is raised at the next save
    writer.save(_state(3), 3)
    with pytest.raises(CheckpointWriteError, match="free space and re-run the same command to resume"):
        writer.close()  # ... or at the end of the run


def test_to_host_copies_nested_state():
    w = torch.ones(3)
    state = {"a": [w, (w, 2.0)], "b": {"c": w}, "s": "x"}
    snap = to_host(state)
    w.add_(1)
    assert torch.equal(snap["a"][0], torch.ones(3)) and torch.equal(snap["b"]["c"], torch.ones(3))
    assert isinstance(snap["a"][1], tuple) and snap["a"][1][1] == 2.0 and snap["s"] == "x"
