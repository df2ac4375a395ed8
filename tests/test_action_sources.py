"""UCF101 / HMDB51 readers: official layouts and split files, each video sharded once, one role per
video and official split, class ids, and the bookkeeping of missing / rejected / unlisted videos."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evaluation.action_synthetic import ODD_NAME, hmdb_role
from shards.action_sources import discover_action
from shards.cli import main as shards_main


def roles(out: Path) -> list[dict]:
    return pq.read_table(out / "split_roles.parquet").to_pylist()


def test_ucf101_shards_once_with_classind_ids(action_shards: dict[str, Path]) -> None:
    out = action_shards["ucf101"]
    card = json.loads((out / "dataset.json").read_text())
    assert list(card["splits"]) == ["videos"]
    videos = card["splits"]["videos"]
    assert (videos["samples"], videos["rejected"], videos["missing"], videos["unlisted_files"]) == (30, 1, 1, 1)
    assert card["settings"]["fps"] == 0 and card["settings"]["size"] == 128
    # classInd order (case-insensitive), not Python's: SpinningBar before SpinTop
    labels = json.loads((out / "labels.json").read_text())
    assert labels["SpinningBar"] == 3 and labels["SpinTop"] == 4 and labels["Biking"] == 0
    manifest = pq.read_table(out / "videos" / "manifest.parquet").to_pylist()
    assert all(labels[r["label"]] == r["label_id"] for r in manifest)
    assert all(r["key"].startswith(f"v_{r['label']}_g") for r in manifest)
    assert {r["height"] for r in manifest} == {128} and {r["num_frames"] for r in manifest} == {40}
    table = roles(out)
    for k in (1, 2, 3):
        rows = [r for r in table if r["split"] == k]
        assert len({r["key"] for r in rows}) == len(rows) == 31  # 30 sharded + the rejected one
        test_groups = {f"g{g:02d}" for g in (2 * k - 1, 2 * k)}
        for r in rows:
            group = r["key"].split("_")[-2]
            assert r["role"] == ("test" if group in test_groups else "train"), r
            assert r["label_id"] == labels[r["label"]]
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert [r["key"] for r in rejected] == ["v_Biking_g90_c01"]
    assert [m["key"] for m in pq.read_table(out / "missing.parquet").to_pylist()] == ["v_Biking_g91_c01"]
    skipped = pq.read_table(out / "skipped.parquet").to_pylist()
    assert [Path(s["source"]).name for s in skipped] == ["v_BouncingBall_g92_c01.avi"]
    action = json.loads((out / "action.json").read_text())
    assert action["generated"].startswith("evaluation.action_synthetic: UCF101 layout")
    assert action["classes"][3:] == ["SpinningBar", "SpinTop"]
    assert action["roles"]["1"] == {"train": 21, "test": 10, "unused": 0}


def test_hmdb51_roles_unused_and_sorted_ids(action_shards: dict[str, Path]) -> None:
    out = action_shards["hmdb51"]
    labels = json.loads((out / "labels.json").read_text())
    assert list(labels.values()) == list(range(5)) and list(labels) == sorted(labels)
    table = roles(out)
    manifest = {r["key"]: r for r in pq.read_table(out / "videos" / "manifest.parquet").to_pylist()}
    assert len(manifest) == 30
    code = {"train": 1, "test": 2, "unused": 0}
    for r in table:
        if r["key"] in manifest:
            name = Path(r["source"]).name
            i = 0 if name == ODD_NAME else int(name.split("_")[0].removeprefix("Synth"))
            assert code[r["role"]] == hmdb_role(i, r["split"], 6), r
    for k in (1, 2, 3):
        rows = [r for r in table if r["split"] == k]
        assert len({r["key"] for r in rows}) == len(rows) == 31
        assert sum(r["role"] == "unused" for r in rows) == 5
    odd = [k for k, r in manifest.items() if r["source"].endswith(ODD_NAME)]
    assert len(odd) == 1 and "(" not in odd[0] and "!" not in odd[0]  # key made safe (hashed)


def _ucf_tree(root: Path, train: str, test: str) -> Path:
    (root / "UCF-101" / "A").mkdir(parents=True)
    (root / "UCF-101" / "A" / "v_A_g01_c01.avi").write_bytes(b"")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 A\n2 B\n")
    for k in (1, 2, 3):
        (lists / f"trainlist{k:02d}.txt").write_text(train)
        (lists / f"testlist{k:02d}.txt").write_text(test)
    return root


def test_split_file_errors_name_the_line(tmp_path: Path) -> None:
    both = _ucf_tree(tmp_path / "both", "A/v_A_g01_c01.avi 1\n", "A/v_A_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist01.txt:1: 'A/v_A_g01_c01.avi' is listed again for split 1 "
                                         r"\(already train at .*trainlist01.txt:1\)"):
        discover_action("ucf101", str(both))
    wrong_id = _ucf_tree(tmp_path / "id", "A/v_A_g01_c01.avi 2\n", "")
    with pytest.raises(ValueError, match=r"trainlist01.txt:1: class id 2 but classInd.txt gives A id 1"):
        discover_action("ucf101", str(wrong_id))
    unknown = _ucf_tree(tmp_path / "cls", "", "C/v_C_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist01.txt:1: 'C/v_C_g01_c01.avi' is not in a class folder"):
        discover_action("ucf101", str(unknown))
    gone = _ucf_tree(tmp_path / "gone", "", "")
    (gone / "ucfTrainTestlist" / "testlist03.txt").unlink()
    with pytest.raises(ValueError, match=r"testlist03.txt: split file missing"):
        discover_action("ucf101", str(gone))
    hmdb = tmp_path / "hmdb"
    (hmdb / "testTrainMulti_7030_splits").mkdir(parents=True)
    for k in (1, 2, 3):
        (hmdb / "testTrainMulti_7030_splits" / f"wave_test_split{k}.txt").write_text("a.avi 1\nb.avi 3\n")
    with pytest.raises(ValueError, match=r"wave_test_split1.txt:2: expected '<video> <1\|2\|0>'"):
        discover_action("hmdb51", str(hmdb))
    with pytest.raises(ValueError, match=r"no testTrainMulti_7030_splits|split folder missing"):
        discover_action("hmdb51", str(tmp_path / "both"))


def test_cli_refuses_splits_and_fills_action_defaults(tmp_path: Path, capsys) -> None:
    root = _ucf_tree(tmp_path / "ucf", "", "")
    assert shards_main(["--data", "ucf101", "--root", str(root), "--out", str(tmp_path / "o"), "--splits", "1"]) == 2
    assert "SPLITS" in capsys.readouterr().err
    from shards.cli import parse_args

    cfg = parse_args(["--data", "hmdb51", "--root", str(root)])
    assert (cfg.fps, cfg.size) == (0.0, 128)
    cfg = parse_args(["--data", "hmdb51", "--root", str(root), "--fps", "5", "--size", "160"])
    assert (cfg.fps, cfg.size) == (5.0, 160)
    assert parse_args(["--data", "kinetics", "--root", str(root)]).fps == 3.0
