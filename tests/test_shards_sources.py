"""The sharder on real files: layouts, rejects, options, frames, rotation, frame-rate resampling."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shards.cli import main as shards_main
from shards.encode import encode_clip, select_frames
from shards.sample import write_video


def indexed_frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frames whose flat grey level encodes their index (10 levels apart)."""
    return [np.full((h, w, 3), 20 + 10 * (i % 23), np.uint8) for i in range(n)]


def frame_index(jpeg: bytes) -> int:
    level = float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")).mean())
    return round((level - 20) / 10)


def decode_sample(out: Path, split: str, key: str) -> tuple[list[bytes], dict]:
    import tarfile

    for tar_path in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            if f"{key}.mjpeg" in names:
                mjpeg = tar.extractfile(f"{key}.mjpeg").read()
                off = np.frombuffer(tar.extractfile(f"{key}.offsets").read(), "<i8")
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                return [mjpeg[off[i]:off[i + 1]] for i in range(len(off) - 1)], meta
    raise KeyError(key)


def run(args: list[str]) -> int:
    return shards_main(args + ["--workers", "1"])


def test_sample_outputs_account_for_every_clip(sample_shards: Path) -> None:
    card = json.loads((sample_shards / "dataset.json").read_text())
    assert card["format_version"] == 2
    train = card["splits"]["train"]
    assert train["missing"] == 2 and train["rejected"] == 5
    assert train["found"] == train["samples"] + train["rejected"]
    rejected = pq.read_table(sample_shards / "rejected.parquet").to_pylist()
    reasons = " | ".join(f"{r['stage']}: {r['reason']}" for r in rejected)
    for expected in ("zero-byte", "not a readable video", "truncated", "no video stream", "MIN_FRAMES"):
        assert expected in reasons
    labels = json.loads((sample_shards / "labels.json").read_text())
    assert list(labels) == sorted(labels) and list(labels.values()) == list(range(len(labels)))
    keys = []
    for split, s in card["splits"].items():
        rows = pq.read_table(sample_shards / split / "manifest.parquet").to_pylist()
        assert len(rows) == s["samples"] == sum(x["samples"] for x in s["shards"])
        keys += [(split, r["key"]) for r in rows]
        for r in rows:
            assert "." not in r["key"] and r["label_id"] == labels.get(r["label"], -1)
    assert len(keys) == len(set(keys))
    test_rows = pq.read_table(sample_shards / "test" / "manifest.parquet").to_pylist()
    assert test_rows and all(r["label"] == "" and r["label_id"] == -1 for r in test_rows)


def test_kinetics_flat_layout_explicit_csv_and_validate_split(tmp_path: Path) -> None:
    root = tmp_path / "k700"
    frames = indexed_frames(20)
    (root / "validate").mkdir(parents=True)
    rows = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for i, label in enumerate(["making tea", "juggling balls", "making tea"]):
        ytid = f"a-b_c{i:07d}"[:11]
        write_video(root / "validate" / f"{ytid}_{i:06d}_{i + 10:06d}.webm".replace(".webm", ".mp4"), frames)
        rows.append(f'"{label}",{ytid},{i},{i + 10},validate,0')
    rows.append(f'"{label}",{ytid},{i},{i + 10},validate,0')  # the same clip listed twice
    rows.append('"missing class",zzzzzzzzzzz,0,10,validate,0')
    csv = tmp_path / "kinetics700_2020_validate.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert run(["--data", "kinetics", "--root", str(root), "--csv", str(csv), "--out", str(out), "--fps", "0"]) == 0
    card = json.loads((out / "dataset.json").read_text())
    split = card["splits"]["validate"]
    assert (split["samples"], split["missing"], split["rejected"]) == (3, 1, 0)
    assert json.loads((out / "labels.json").read_text()) == {"juggling balls": 0, "making tea": 1, "missing class": 2}
    jpegs, meta = decode_sample(out, "validate", "a-b_c000000_000000_000010")
    assert meta["label"] == "making tea" and meta["num_frames"] == 20 == len(jpegs)
    assert [frame_index(j) for j in jpegs] == list(range(20))


def test_kinetics_csv_at_root_and_split_filter(tmp_path: Path) -> None:
    root = tmp_path / "k"
    for split in ("train", "val"):
        write_video(root / split / "some_class" / "abcdefghijk_000001_000011.mp4", indexed_frames(12))
        (root / f"{split}.csv").write_text(f"label,youtube_id,time_start,time_end,split\nsome class,abcdefghijk,1,11,{split}\n")
    out = tmp_path / "out"
    assert run(["--data", "kinetics", "--root", str(root), "--out", str(out), "--splits", "val", "--fps", "0"]) == 0
    card = json.loads((out / "dataset.json").read_text())
    assert list(card["splits"]) == ["val"] and card["splits"]["val"]["samples"] == 1


def test_folder_data_odd_names_get_safe_unique_keys(tmp_path: Path) -> None:
    root = tmp_path / "f"
    names = ["clip one.mp4", "clip.v2.final.mp4", "ünïcode клип.mp4"]
    for cls in ("cat", "dog"):
        for name in names:
            write_video(root / "train" / cls / name, indexed_frames(10))
    out = tmp_path / "out"
    assert run(["--data", "folder", "--root", str(root), "--out", str(out), "--fps", "0"]) == 0
    rows = pq.read_table(out / "train" / "manifest.parquet").to_pylist()
    keys = [r["key"] for r in rows]
    assert len(rows) == 6 and len(set(keys)) == 6
    assert all("." not in k and "/" not in k for k in keys)
    assert sorted({r["label"] for r in rows}) == ["cat", "dog"]


@pytest.mark.parametrize("args, message", [
    (["--data", "kinetics", "--root", "/nonexistent/root"], "ROOT /nonexistent/root: no such directory"),
    (["--data", "kinetics"], "needs ROOT"),
    (["--data", "sample", "--fps", "-1"], "FPS must be >= 0"),
    (["--data", "sample", "--quality", "0"], "QUALITY must be in"),
    (["--data", "sample", "--size", "abc"], "invalid int value"),
])
def test_bad_options_one_line_and_nothing_written(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "invalid" in message else _no_raise():
        code = shards_main(args + ["--out", str(out)])
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_csv_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "root" / "train").mkdir(parents=True)
    assert shards_main(["--data", "kinetics", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "o")]) == 2
    assert "no annotation CSV" in capsys.readouterr().err
    assert shards_main(["--data", "kinetics", "--root", str(tmp_path / "root"), "--csv", "nope.csv",
                        "--out", str(tmp_path / "o")]) == 2
    assert "CSV nope.csv: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_frames_match_resized_source_psnr(sample_root: Path) -> None:
    src = next((sample_root / "train").rglob("*.mp4"))
    clip = encode_clip(str(src), 256, 90, 0, 1)
    with av.open(str(src)) as c:
        ref = [f.reformat(width=clip.width, height=clip.height, format="rgb24", interpolation="BICUBIC").to_ndarray()
               for f in c.decode(video=0)]
    assert clip.num_frames == len(ref)
    for i in (0, len(ref) // 2, len(ref) - 1):
        got = np.asarray(Image.open(io.BytesIO(clip.mjpeg[clip.offsets[i]:clip.offsets[i + 1]])).convert("RGB"))
        mse = np.mean((got.astype(np.float64) - ref[i]) ** 2)
        assert 10 * np.log10(255**2 / mse) >= 35.0


def test_resampling_follows_presentation_time_with_variable_frame_rate(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mkv"
    times_ms = [0, 40, 80, 300, 340, 700, 740, 780, 1000, 1200]  # irregular gaps
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(indexed_frames(i + 1)[i], format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = encode_clip(str(path), 48, 95, 10.0, 1)
    got = [frame_index(clip.mjpeg[clip.offsets[i]:clip.offsets[i + 1]]) for i in range(clip.num_frames)]
    # slot k at k*100 ms shows the last frame with time <= k*100 ms
    expected = [max(i for i, t in enumerate(times_ms) if t <= 100 * k) for k in range(len(got))]
    assert got == expected and len(got) >= 12


def test_select_frames_counts_slots() -> None:
    frames = [(i / 30, i) for i in range(30)]  # 1 s at 30 fps
    out = list(select_frames(iter(frames), 10.0, 1 / 30))
    assert sum(n for n, _ in out) == 10
    assert [f for n, f in out for _ in range(n)] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert sum(n for n, _ in select_frames(iter(frames), 0, 1 / 30)) == 30


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.mp4"
    frame = np.full((48, 64, 3), 40, np.uint8)
    frame[:12, :12] = 250  # bright marker, top-left of the stored frame
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # shown rotated 90 degrees counter-clockwise
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = encode_clip(str(path), 48, 95, 0, 1)
    assert (clip.width, clip.height) == (48, 64) and clip.rotation == 90
    img = np.asarray(Image.open(io.BytesIO(clip.mjpeg[: clip.offsets[1]])).convert("L"))
    assert img[-6:, :6].mean() > 200 and img[:6, :6].mean() < 100  # top-left went to bottom-left


def test_unreadable_and_directory_sources_are_rejected_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "f"
    write_video(root / "train" / "cls" / "good.mp4", indexed_frames(10))
    (root / "train" / "cls").joinpath("dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (root / "train" / "cls" / "a_directory.mp4").mkdir()
    (root / "train" / "cls" / "a_directory.mp4" / "x.txt").write_text("not a video")
    out = tmp_path / "out"
    assert run(["--data", "folder", "--root", str(root), "--out", str(out), "--fps", "0"]) == 0
    rejected = {r["key"]: r for r in pq.read_table(out / "rejected.parquet").to_pylist()}
    assert rejected["dangling"]["stage"] == "open" and "unreadable file" in rejected["dangling"]["reason"]
    assert pq.read_table(out / "train" / "manifest.parquet").column("key").to_pylist() == ["good"]
