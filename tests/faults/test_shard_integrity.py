"""Format v2 checksums and ``inspect --verify [--quick]`` on damaged copies of the sample shards.

Every fault test asserts the exact set of (shard, key, frame) that verify.parquet names against
the set the damage touched, and the exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards.card import read_card
from shards.inspect import main as inspect_main
from shards.integrity import (
    CHECKSUM,
    CRC_TABLE,
    DECODE,
    DIGEST,
    INDEX,
    MISSING,
    TRUNCATED,
    check_frame,
    frame_crc,
    read_tables,
)
from shards.tario import BLOCK, read_index
from tests.faults.common import TWO_PER_SHARD, output_files, shard_locally
from tests.faults.corrupt import (
    copy_set,
    disagreeing_index,
    downgrade_to_v1,
    flip_bits,
    members,
    rewrite,
    truncate_in,
    zero_middle,
)

Spots = set[tuple[str, str | None, int | None]]


def verify(out: Path | str, *flags: str, report: Path | None = None) -> tuple[int, list[dict]]:
    """Run ``inspect --verify`` in this process; returns the exit code and the report's rows."""
    code = inspect_main([str(out), "--verify", "--workers", "1", *flags])
    report = report or Path(out) / "verify.parquet"
    return code, pq.read_table(report).to_pylist() if report.exists() else []


def spots(rows: list[dict], reason: str | None = None) -> Spots:
    return {(r["shard"], r["key"], r["frame"]) for r in rows if reason is None or r["reason"] == reason}


@pytest.fixture()
def copy(sample_shards: Path, tmp_path: Path) -> Path:
    return copy_set(sample_shards, tmp_path / "set")


def test_v2_layout_checksums_digests_and_the_one_pread_recipe(sample_shards: Path) -> None:
    card = read_card(sample_shards)
    assert card["format_version"] == 2 and card["components"] == ["mjpeg", "offsets", "crc", "json"]
    assert card["checksums"] == {"frame": "crc32", "frame_member": "crc", "frame_dtype": "<u4", "shard": "sha256"}
    for split, s in card["splits"].items():
        for shard in s["shards"]:
            tar = sample_shards / split / shard["tar"]
            stats = json.loads(tar.with_suffix(".stats.json").read_text())
            assert shard["sha256"] == stats["tar_sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
            idx = tar.with_suffix(".idx")
            assert shard["index_sha256"] == stats["index_sha256"] == hashlib.sha256(idx.read_bytes()).hexdigest()
            fd = os.open(tar, os.O_RDONLY)
            for sample in read_index(idx):
                assert [m.ext for m in sample] == ["mjpeg", "offsets", "crc", "json"]
                m = {x.ext: x for x in sample}
                n = m["offsets"].size // 8 - 1
                assert m["crc"].size == 4 * n
                # one pread fetches both tables: the .crc member follows the offsets' padding and its header
                assert m["crc"].offset - m["offsets"].offset == -(-m["offsets"].size // BLOCK) * BLOCK + BLOCK
                off, crcs = read_tables(fd, m["offsets"].offset, m["crc"].offset, n)
                assert len(off) == n + 1 and off[-1] == m["mjpeg"].size and len(crcs) == n
                for i in range(n):
                    jpeg = os.pread(fd, int(off[i + 1] - off[i]), m["mjpeg"].offset + int(off[i]))
                    assert crcs[i] == zlib.crc32(jpeg) == frame_crc(jpeg)
                    assert check_frame(jpeg, crcs[i]) is None
                    assert check_frame(jpeg[:-1] + bytes([jpeg[-1] ^ 1]), crcs[i]) == CHECKSUM
                meta = json.loads(os.pread(fd, m["json"].size, m["json"].offset))
                assert meta["format_version"] == 2 and meta["num_frames"] == n
            os.close(fd)


def test_a_clean_set_passes_and_leaves_no_report(copy: Path, capsys) -> None:
    (copy / "verify.parquet").write_bytes(b"a report of an earlier run")
    assert verify(copy) == (0, [])
    printed = capsys.readouterr().out
    assert "ok train: 18 samples" in printed and "checksums match" in printed
    assert "removed the report of an earlier run" in printed and not (copy / "verify.parquet").exists()
    assert verify(copy, "--quick") == (0, [])
    assert "ok train: 6 shards" in capsys.readouterr().out


def test_zeroed_range_in_every_frame_of_one_sample(copy: Path, capfd) -> None:
    damaged = zero_middle(copy, "train", 1, 1)
    code, rows = verify(copy)
    assert code == 1
    assert spots(rows) == damaged | {("train-000001.tar", None, None)}
    assert spots(rows, CHECKSUM) == damaged and spots(rows, DIGEST) == {("train-000001.tar", None, None)}
    # libjpeg's warnings land in the detail column, one per frame, not on stderr
    assert all("Corrupt JPEG data" in r["detail"] for r in rows if r["frame"] is not None)
    out, err = capfd.readouterr()
    assert "Corrupt JPEG" not in err
    assert f"report: {copy}/verify.parquet" in out.replace("\n", "")
    code, rows = verify(copy, "--quick")
    assert code == 1 and spots(rows, DIGEST) == spots(rows) == {("train-000001.tar", None, None)}


def test_bit_flips_in_two_splits_also_with_worker_processes(copy: Path) -> None:
    damaged = flip_bits(copy, [("train", 0, 0, 1), ("train", 0, 3, 7), ("train", 4, 0, 0), ("val", 1, 0, 4)])
    bad_shards = {(s, None, None) for s, _, _ in damaged}
    code = inspect_main([str(copy), "--verify", "--workers", "2"])
    rows = pq.read_table(copy / "verify.parquet").to_pylist()
    assert code == 1 and len(bad_shards) == 3
    assert spots(rows, CHECKSUM) == damaged and spots(rows) == damaged | bad_shards
    code, rows = verify(copy, "--quick")
    assert code == 1 and spots(rows) == bad_shards


def test_truncated_tar_names_the_shard_and_every_lost_sample(copy: Path) -> None:
    lost = truncate_in(copy, "train", 2, 1)
    code, rows = verify(copy)
    assert code == 1 and spots(rows) == lost and {r["reason"] for r in rows} == {TRUNCATED}
    code, rows = verify(copy, "--quick")
    assert code == 1 and spots(rows, TRUNCATED) == {("train-000002.tar", None, None)}


def test_index_disagreeing_with_the_tar(copy: Path) -> None:
    named = disagreeing_index(copy, "val", 0, moved=0, dropped=2)
    code, rows = verify(copy)
    assert code == 1
    assert spots(rows, INDEX) == named  # the moved entry and the sample the index leaves out
    assert spots(rows) == named | {("val-000000.tar", None, None)}  # the index's sha256 differs from the card's
    code, rows = verify(copy, "--quick")
    assert code == 1 and spots(rows, DIGEST) == spots(rows) == {("val-000000.tar", None, None)}


def test_missing_member_damaged_header_and_bad_checksum_table(copy: Path) -> None:
    tar, samples = members(copy, "train", 3)
    no_crc, short_crc = samples[1]["mjpeg"].key, samples[2]["mjpeg"].key

    def edit(key: str, parts: dict[str, bytes]) -> dict[str, bytes]:
        if key == no_crc:
            return {ext: data for ext, data in parts.items() if ext != "crc"}
        return {**parts, "crc": parts["crc"][:-4]} if key == short_crc else parts

    rewrite(tar, edit)  # a well-formed tar and index, missing one member and one checksum
    tar0, samples0 = members(copy, "test", 0)
    header = samples0[0]["json"].offset - BLOCK
    with open(tar0, "r+b") as fh:  # one byte of a tar header's name: its header checksum fails
        fh.seek(header + 3)
        fh.write(b"#")
    code, rows = verify(copy)
    assert code == 1
    assert spots(rows, MISSING) == {(tar.name, no_crc, None), (tar0.name, samples0[0]["json"].key, None)}
    assert spots(rows, CRC_TABLE) == {(tar.name, short_crc, None)}
    assert spots(rows, DIGEST) == {(tar.name, None, None), (tar0.name, None, None)}
    assert not spots(rows, CHECKSUM) and not spots(rows, DECODE)


def test_a_url_set_streams_and_reports_in_the_current_directory(copy: Path, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    damaged = zero_middle(copy, "val", 1, 0)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    code, rows = verify(f"file://{copy}", report=here / "set.verify.parquet")
    assert code == 1 and spots(rows, CHECKSUM) == damaged
    assert f"report: {here}/set.verify.parquet" in capsys.readouterr().out.replace("\n", "")
    assert not (copy / "verify.parquet").exists()


def test_format_v1_is_read_decoded_and_said_once(copy: Path, capsys) -> None:
    downgrade_to_v1(copy)
    assert verify(copy) == (0, [])
    out, err = capsys.readouterr()
    assert err.count("carry no checksums") == 1 and "format v1: no checksums to check" in out
    assert "ok train: 18 samples, 160 frames decoded, format v1: no checksums" in out
    assert verify(copy, "--quick") == (0, [])
    assert "format v1: no digests" in capsys.readouterr().out
    damaged = zero_middle(copy, "train", 1, 1)
    code, rows = verify(copy)
    assert code == 1 and spots(rows) == damaged and {r["reason"] for r in rows} == {DECODE}
    assert verify(copy, "--quick") == (0, [])  # sizes are all v1 has, and they did not change
    truncate_in(copy, "train", 0, 3)
    code, rows = verify(copy, "--quick")
    assert code == 1 and spots(rows) == {("train-000000.tar", None, None)}



def test_rerunning_the_sharder_on_a_v1_output_rewrites_it_as_v2(sample_root: Path, tmp_path: Path, capsys,
                                                                val_test_reference: dict[str, bytes]) -> None:
    out = downgrade_to_v1(shard_locally(sample_root, tmp_path / "out", TWO_PER_SHARD))
    plan = json.loads((out / "plan.json").read_text())
    del plan["format_version"]  # how the v1 sharder left it
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    for stats in out.glob("*/*.stats.json"):
        kept = {k: v for k, v in json.loads(stats.read_text()).items() if k not in ("tar_sha256", "index_sha256")}
        stats.write_text(json.dumps(kept, indent=1))
    capsys.readouterr()
    shard_locally(sample_root, out, TWO_PER_SHARD)
    assert "holds format v1 shards: rewriting every shard as format v2" in capsys.readouterr().err
    assert output_files(out) == val_test_reference  # as if it had been written as v2 from the start
