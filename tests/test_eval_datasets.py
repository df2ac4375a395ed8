"""Benchmark readers: the official layouts are found, and missing or malformed parts give one
clear ValueError naming what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import synthetic
from evaluation.datasets import read_davis, read_index_png, read_jhmdb, read_vip, voc_palette


@pytest.fixture()
def davis(tmp_path: Path) -> Path:
    return synthetic.write_davis(tmp_path / "DAVIS", n_seq=2, T=4, hw=(32, 48))


def test_davis_layout(davis: Path):
    videos = read_davis(davis)
    assert [v.name for v in videos] == ["synth0", "synth1"]
    assert [p.name for p in videos[0].frames] == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    assert all(m.suffix == ".png" for m in videos[0].masks)
    with Image.open(videos[0].masks[0]) as im:
        assert im.mode == "P" and im.getpalette()[:9] == voc_palette()[:9]


@pytest.mark.parametrize("remove", ["JPEGImages/480p", "Annotations/480p", "ImageSets/2017/val.txt"])
def test_davis_missing_part(davis: Path, remove: str):
    target = davis / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ValueError, match=remove.split("/")[0]):
        read_davis(davis)


def test_davis_missing_root_sequence_and_frame(davis: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="nowhere"):
        read_davis(tmp_path / "nowhere")
    (davis / "Annotations/480p/synth1/00002.png").unlink()
    with pytest.raises(ValueError, match=r"synth1/00002\.png"):
        read_davis(davis)
    (davis / "ImageSets/2017/val.txt").write_text("synth0\nghost\n")
    with pytest.raises(ValueError, match="ghost"):
        read_davis(davis)
    (davis / "ImageSets/2017/val.txt").write_text("\n")
    with pytest.raises(ValueError, match="no sequences"):
        read_davis(davis)


def test_index_png_rejects_rgb(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="mode RGB"):
        read_index_png(path)
    path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        read_index_png(path)


def test_jhmdb_layout_and_errors(tmp_path: Path):
    root = synthetic.write_jhmdb(tmp_path / "JHMDB", n_seq=2, T=3, hw=(48, 64))
    videos = read_jhmdb(root)
    assert [v.name for v in videos] == ["wave/clip0", "wave/clip1"]
    assert videos[0].joints.shape == (3, 15, 2) and len(videos[0].frames) == 3
    # two-column lines (frames dir, mat file) resolve the same files; 1-based -> 0-based
    (root / "two_col.txt").write_text(
        "Rename_Images/wave/clip0 joint_positions/wave/clip0/joint_positions.mat\n")
    two = read_jhmdb(root, "two_col.txt")
    np.testing.assert_array_equal(two[0].joints, videos[0].joints)
    assert (two[0].joints == np.floor(two[0].joints)).all()
    with pytest.raises(ValueError, match="val_list_x"):
        read_jhmdb(root, "val_list_x.txt")
    from scipy.io import savemat

    savemat(str(root / "joint_positions/wave/clip1/joint_positions.mat"), {"other": np.zeros(3)})
    with pytest.raises(ValueError, match="pos_img"):
        read_jhmdb(root)
    (root / "joint_positions/wave/clip1/joint_positions.mat").unlink()
    with pytest.raises(ValueError, match="clip1/joint_positions.mat"):
        read_jhmdb(root)


def test_vip_layout_and_errors(tmp_path: Path):
    root = synthetic.write_vip(tmp_path / "VIP_Fine", n_seq=1, T=3, hw=(32, 48))
    (root / "Annotations/Category_ids/vid0/000001.png").unlink()  # later frames may lack labels
    videos = read_vip(root)
    assert videos[0].masks[1] is None and videos[0].masks[2] is not None
    (root / "Annotations/Category_ids/vid0/000000.png").unlink()
    with pytest.raises(ValueError, match="first-frame annotation"):
        read_vip(root)
    shutil.rmtree(root / "Images")
    with pytest.raises(ValueError, match="Images"):
        read_vip(root)
