"""Training on damaged copies of the sample shards (range mode): every bad sample met is replaced,
listed in bad_samples.jsonl and counted, and every other step sees exactly the samples and frames
of a run on the undamaged set with the same seed (compared through keys.jsonl)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.integrity import ReaderError
from pipeline.loader import build_loader
from shards.inspect import main as inspect_main
from shards.integrity import CHECKSUM, CRC_TABLE, DECODE, INDEX, OFFSETS, TRUNCATED
from tests.faults.corrupt import (
    copy_set,
    disagreeing_index,
    downgrade_to_v1,
    flip_bits,
    members,
    rewrite,
    truncate_in,
    undecodable_frame,
    zero_middle,
)
from tests.faults.launch import PRESET, ROOT, free_port, torchrun_cmd, train_env
from tools.train import main

RANGE = ["train.device=cpu", "train.batch_size_per_gpu=2", "train.max_steps=12", "train.log_every=4",
         "train.tensorboard=false", "train.checkpoint_every_steps=0", "train.log_keys=true",
         "pipeline.read_mode=range", "pipeline.range_workers=1"]
Damage = dict[tuple[str, str], set[int] | None]  # (shard, key) -> damaged frames, None: the whole sample


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(shards: Path, out: Path, *extra: str) -> int:
    return main(["--shards", str(shards), "--config", PRESET, "--out", str(out), *RANGE, *extra])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def slots(out: Path) -> dict[tuple[int, int, int], tuple[str, list[int]]]:
    """(step, rank, slot) -> (key, frames) of a run with train.log_keys."""
    return {(r["step"], r["rank"], i): (k, f) for r in jsonl(out / "keys.jsonl")
            for i, (k, f) in enumerate(zip(r["keys"], r["frames"]))}


@pytest.fixture(scope="module")
def clean(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "run"
    assert train(sample_shards, out) == 0
    assert jsonl(out / "bad_samples.jsonl") == []
    return slots(out)


def shard_of(copy: Path) -> dict[str, tuple[str, int, int]]:
    """key -> (shard file, shard number, sample position) of the train split."""
    out = {}
    for n in range(6):
        tar, samples = members(copy, "train", n)
        out.update({s["mjpeg"].key: (tar.name, n, i) for i, s in enumerate(samples)})
    return out


def expected_first(clean: dict, damage: Damage) -> dict[tuple[int, int, int], tuple[str, str, int | None]]:
    """(step, rank, slot) -> (shard, key, frame) of the bad sample the clean run's draw meets there."""
    shard = {key: s for s, key in damage}
    out = {}
    for where, (key, frames) in clean.items():
        if (shard.get(key), key) not in damage:
            continue
        bad = damage[shard[key], key]
        if bad is None:
            out[where] = (shard[key], key, None)
        elif set(frames) & bad:
            out[where] = (shard[key], key, min(set(frames) & bad))
    return out


def check_run(clean: dict, out: Path, damage: Damage, reason: str) -> None:
    """The run met exactly the bad samples the clean run's draws predict (plus bad replacements),
    replaced each, and saw everything else as the clean run did."""
    seen, bad = slots(out), jsonl(out / "bad_samples.jsonl")
    assert seen.keys() == clean.keys()
    first = expected_first(clean, damage)
    assert first, "the damage must touch samples the run draws"
    by_step: dict[tuple[int, int], list] = {}
    for r in bad:
        by_step.setdefault((r["step"], r["rank"]), []).append((r["shard"], r["key"], r["frame"]))
        assert r["reason"] == reason
        assert (r["shard"], r["key"]) in damage
    for (step, rank, _), met in first.items():
        assert met in by_step.get((step, rank), []), (step, rank, met)
    assert set(by_step) == {w[:2] for w in first}  # a replacement may be bad too, never a sound draw
    for where, (key, frames) in seen.items():
        if where in first:
            assert key != clean[where][0] or frames != clean[where][1]
        else:
            assert (key, frames) == clean[where], where
        assert not expected_first({where: (key, frames)}, damage)  # what was trained on is sound
    metrics = jsonl(out / "metrics.jsonl")
    assert sum(m["bad_samples"] for m in metrics) == metrics[-1]["bad_samples_total"] == len(bad)


def test_bit_flips_in_frames_the_run_draws_and_one_it_does_not(clean, sample_shards, tmp_path, capsys):
    copy = copy_set(sample_shards, tmp_path / "set")
    where = shard_of(copy)
    picks, damage = [], {}
    for step in (0, 5, 9):
        key, frames = clean[step, 0, 1]
        name, n, i = where[key]
        picks.append(("train", n, i, frames[1]))
        damage.setdefault((name, key), set()).add(frames[1])
    key = clean[3, 0, 0][0]  # a frame of a drawn sample that no draw of it takes: never reported
    drawn = {f for k, fr in clean.values() if k == key for f in fr}
    unused = min(set(range(8)) - drawn)
    name, n, i = where[key]
    picks.append(("train", n, i, unused))
    damage.setdefault((name, key), set()).add(unused)
    flip_bits(copy, picks)
    assert train(copy, tmp_path / "run", "train.max_bad_fraction=0.5") == 0
    check_run(clean, tmp_path / "run", damage, CHECKSUM)
    log = capsys.readouterr().out
    assert log.count("bad sample replaced:") == len(jsonl(tmp_path / "run" / "bad_samples.jsonl"))


def test_zeroed_range_every_bad_sample_listed_no_libjpeg_noise(clean, sample_shards, tmp_path, capfd):
    copy = copy_set(sample_shards, tmp_path / "set")
    where = shard_of(copy)
    damage: Damage = {}
    for key in {clean[s, 0, 0][0] for s in (2, 7)}:
        name, n, i = where[key]
        damage[name, key] = {f for _, _, f in zero_middle(copy, "train", n, i)}
    assert train(copy, tmp_path / "run", "train.max_bad_fraction=0.5") == 0
    check_run(clean, tmp_path / "run", damage, CHECKSUM)
    assert "Corrupt JPEG" not in "".join(capfd.readouterr())


def test_truncated_tar_loses_the_cut_sample_and_the_rest_of_its_shard(clean, sample_shards, tmp_path):
    copy = copy_set(sample_shards, tmp_path / "set")
    lost = truncate_in(copy, "train", 2, 1)
    damage: Damage = {(s, k): None for s, k, _ in lost if k is not None}
    assert len(damage) == 3
    assert train(copy, tmp_path / "run", "train.max_bad_fraction=0.5") == 0
    check_run(clean, tmp_path / "run", damage, TRUNCATED)


def test_index_disagreeing_with_the_tar(clean, sample_shards, tmp_path):
    copy = copy_set(sample_shards, tmp_path / "set")
    named = disagreeing_index(copy, "train", 3, moved=0, dropped=2)
    damage: Damage = {(s, k): None for s, k, _ in named}
    assert train(copy, tmp_path / "run", "train.max_bad_fraction=0.5") == 0
    check_run(clean, tmp_path / "run", damage, INDEX)


def test_a_frame_the_decoder_rejects_despite_its_checksum(clean, sample_shards, tmp_path, capfd):
    """DALI fails the batch; the loader makes it again with the frames decoded on the reader side."""
    copy = copy_set(sample_shards, tmp_path / "set")
    where = shard_of(copy)
    damage: Damage = {}
    for step in (1, 6):
        key, frames = clean[step, 0, 0]
        name, n, i = where[key]
        damage[name, key] = {f for _, _, f in undecodable_frame(copy, "train", n, i, frames[2])}
    assert train(copy, tmp_path / "run", "train.max_bad_fraction=0.5") == 0
    check_run(clean, tmp_path / "run", damage, DECODE)
    assert "Traceback" not in "".join(capfd.readouterr())


def test_a_resumed_run_lists_each_bad_sample_once(clean, sample_shards, tmp_path):
    """Steps redone after a resume meet the same bad samples and replacements; the list drops the
    redone steps' lines first, so it ends as a straight run's."""
    copy = copy_set(sample_shards, tmp_path / "set")
    where = shard_of(copy)
    for key in {clean[5, 0, 0][0], clean[10, 0, 1][0]}:
        zero_middle(copy, "train", *where[key][1:])
    out = tmp_path / "run"
    args = ["train.max_bad_fraction=0.5", "train.checkpoint_every_steps=4"]
    assert train(copy, out, *args) == 0
    straight = {name: (out / name).read_text() for name in ("bad_samples.jsonl", "keys.jsonl")}
    assert {r["step"] for r in jsonl(out / "bad_samples.jsonl")} - set(range(8)), "bad samples after step 8"
    (out / "checkpoints" / "ckpt_000000012.pth").unlink()  # the run resumes at step 8
    assert train(copy, out, *args) == 0
    assert {name: (out / name).read_text() for name in straight} == straight


def test_past_the_fraction_the_run_stops_naming_the_worst_shard(clean, sample_shards, tmp_path, capsys):
    copy = copy_set(sample_shards, tmp_path / "set")
    truncate_in(copy, "train", 2, 1)
    out = tmp_path / "run"
    assert train(copy, out) == 1  # the default 0.1 %: the first bad sample is too many for 18 clips
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "over train.max_bad_fraction=0.001" in err[0], err
    assert "worst shard train-000002.tar" in err[0] and str(out / "bad_samples.jsonl") in err[0]
    bad = jsonl(out / "bad_samples.jsonl")
    stopped = jsonl(out / "metrics.jsonl")[-1]
    assert bad and stopped["bad_samples_total"] == len(bad) and stopped["step"] < 12
    assert (out / "checkpoints" / f"ckpt_{stopped['step']:09d}.pth").exists()
    assert not (out / "teacher.pth").exists()


def test_v1_set_frames_are_decoded_on_the_reader_side(sample_shards, tmp_path, capfd):
    copy = downgrade_to_v1(copy_set(sample_shards, tmp_path / "set"))
    zero_middle(copy, "train", 0, 0)
    zero_middle(copy, "train", 4, 1)
    cfg = PipelineConfig(read_mode="range", global_size=32, local_size=16, num_local=0, range_workers=1)
    loader = build_loader(cfg, copy, batch_size=3, device="cpu")
    keys = {members(copy, "train", 0)[1][0]["mjpeg"].key, members(copy, "train", 4)[1][1]["mjpeg"].key}
    bad = [r for e in range(3) for b in loader.iter_epoch(e) for r in b["bad"]]
    assert bad and {r["key"] for r in bad} <= keys and {r["reason"] for r in bad} == {DECODE}
    assert "Corrupt JPEG" not in "".join(capfd.readouterr())


def test_whole_mode_refuses_a_set_that_failed_verify(sample_shards, tmp_path, capsys):
    copy = copy_set(sample_shards, tmp_path / "set")
    zero_middle(copy, "val", 0, 0)
    assert inspect_main([str(copy), "--verify", "--workers", "1"]) == 1
    rows = pq.read_metadata(copy / "verify.parquet").num_rows
    with pytest.raises(ValueError, match=rf"found {rows} problems .*verify\.parquet.*read_mode=range"):
        build_loader(PipelineConfig(), copy, batch_size=2, device="cpu")
    assert len(build_loader(PipelineConfig(read_mode="range"), copy, batch_size=2, device="cpu")) > 0


def loader_slots(shards: Path, world: int, steps: int) -> dict[tuple[int, int, int], tuple[str, list[int]]]:
    """What each rank's loader gives for ``steps`` steps (as keys.jsonl records it), on its own."""
    out = {}
    for rank in range(world):
        loader = build_loader(PipelineConfig(read_mode="range", global_size=16, local_size=16, num_local=0,
                                             range_workers=1), shards, batch_size=2, device="cpu", rank=rank,
                              world_size=world)
        for step in range(steps):
            if step % len(loader) == 0:
                batches = loader.iter_epoch(step // len(loader))
            b = next(batches)
            out.update({(step, rank, i): (k, f) for i, (k, f) in enumerate(zip(b["key"], b["frame_idx"].tolist()))})
    return out


@pytest.mark.slow
def test_two_ranks_gather_their_bad_samples_and_stop_together(sample_shards, tmp_path):
    clean = loader_slots(sample_shards, 2, 8)
    copy = copy_set(sample_shards, tmp_path / "set")
    lost = truncate_in(copy, "train", 2, 1)
    damage: Damage = {(s, k): None for s, k, _ in lost if k is not None}
    assert {rank for rank, _ in {w[1:] for w in expected_first(clean, damage)}} == {0, 1}
    overrides = [*RANGE, "train.max_steps=8"]
    out = tmp_path / "run"
    res = subprocess.run(torchrun_cmd(copy, out, *overrides, "train.max_bad_fraction=0.5", port=free_port(), nproc=2),
                         cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    check_run(clean, out, damage, TRUNCATED)
    stopped = tmp_path / "stopped"
    res = subprocess.run(torchrun_cmd(copy, stopped, *overrides, port=free_port(), nproc=2),
                         cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert res.stderr.count("over train.max_bad_fraction=0.001; worst shard train-000002.tar") == 2  # each rank
    assert jsonl(stopped / "bad_samples.jsonl") and not (stopped / "teacher.pth").exists()


@pytest.mark.parametrize("verify_offsets", [True, False])
def test_missing_or_short_checksum_table_and_broken_offsets(sample_shards, tmp_path, verify_offsets):
    """Found when the split opens (verify_offsets) or when the sample is read: the same bad samples."""
    copy = copy_set(sample_shards, tmp_path / "set")
    tar, samples = members(copy, "train", 3)
    no_crc, short_crc = samples[1]["mjpeg"].key, samples[2]["mjpeg"].key

    def edit(key: str, parts: dict[str, bytes]) -> dict[str, bytes]:
        if key == no_crc:
            return {ext: data for ext, data in parts.items() if ext != "crc"}
        return {**parts, "crc": parts["crc"][:-4]} if key == short_crc else parts

    rewrite(tar, edit)
    card = json.loads((copy / "dataset.json").read_text())
    card["splits"]["train"]["shards"][3]["bytes"] = tar.stat().st_size
    (copy / "dataset.json").write_text(json.dumps(card))
    tar1, samples1 = members(copy, "train", 1)
    broken = samples1[0]["offsets"]
    with open(tar1, "r+b") as fh:  # frame 1 ends before it starts
        fh.seek(broken.offset + 16)
        fh.write(np.array([3], dtype="<i8").tobytes())
    cfg = PipelineConfig(read_mode="range", global_size=16, local_size=16, num_local=0, range_workers=1,
                         verify_offsets=verify_offsets)
    loader = build_loader(cfg, copy, batch_size=4, device="cpu")
    bad = {(r["key"], r["reason"]) for e in range(4) for b in loader.iter_epoch(e) for r in b["bad"]}
    want = {(no_crc, CRC_TABLE), (broken.key, OFFSETS)}
    if verify_offsets:  # the open finds the short table; a read only checks the entries it needs
        want.add((short_crc, CRC_TABLE))
    assert want <= bad and {k for k, _ in bad} <= {no_crc, short_crc, broken.key}


def test_clip_workload_range_mode_stops_on_a_bad_sample_naming_it(clip_shards, tmp_path):
    """A clip workload reads through the same frame check; with no replacement for its per-batch
    plan, a bad sample stops the batch with one line naming the shard, the sample and the reason."""
    out = copy_set(clip_shards, tmp_path / "clips")
    for shard in range(len(list((out / "train").glob("*.tar")))):  # every sample of the split
        for i in range(len(members(out, "train", shard)[1])):
            zero_middle(out, "train", shard, i)
    cfg = PipelineConfig(workload="cstp", read_mode="range", clip_size=32, num_threads=1, shuffle_buffer=8)
    loader = build_loader(cfg, out, batch_size=2, device="cpu")
    with pytest.raises(ReaderError, match=rf"train-\d+\.tar: sample \S+ frame \d+: {CHECKSUM}"):
        next(iter(loader.iter_epoch(0)))
