"""Readers for the official layouts of DAVIS-2017, JHMDB and VIP, plus index-PNG I/O.

Every reader returns a list of ``Video`` records (paths only; pixels are loaded lazily) and
raises one ``ValueError`` naming the missing or malformed directory or file.
Images are uint8 tensors [3, H, W] (RGB); masks are uint8 numpy arrays [H, W] of label ids;
joints are float arrays [T, J, 2] of (x, y) pixel coordinates, 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

FRAME_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class Video:
    """One sequence: its frames and, depending on the task, masks or joints."""

    name: str
    frames: list[Path]
    masks: list[Path | None] | None = None  # one per frame; None where not annotated
    joints: np.ndarray | None = None  # [T, J, 2], (x, y), 0-based pixels


def _require(paths: list[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")


def _split_names(split_file: Path) -> list[str]:
    names = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"{split_file}: split file lists no sequences")
    return names


def _frames_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: frame directory is missing")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS)
    if not frames:
        raise ValueError(f"{folder}: no .jpg/.png frames in the directory")
    return frames


GENERATED_MARKER = "GENERATED.txt"


def mark_generated(root: str | Path, what: str) -> None:
    """Mark a benchmark tree as generated data (``ROOT/GENERATED.txt`` says what made it)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / GENERATED_MARKER).write_text(what.strip() + "\n")


def generated_note(root: str | Path) -> str | None:
    """What generated the benchmark at ``root`` (its marker's text), or None for real data."""
    marker = Path(root) / GENERATED_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def read_davis(root: str | Path, split: str = "val", resolution: str = "480p") -> list[Video]:
    """DAVIS-2017: JPEGImages/<res>/<seq>/*.jpg, Annotations/<res>/<seq>/*.png, ImageSets/2017/<split>.txt.

    Every frame must have its annotation (the official scorer needs them all).
    """
    root = Path(root)
    jpeg, ann = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    split_file = root / "ImageSets" / "2017" / f"{split}.txt"
    _require([root, jpeg, ann, split_file], f"DAVIS-2017 root {root}")
    videos = []
    for name in _split_names(split_file):
        frames = _frames_in(jpeg / name)
        if not (ann / name).is_dir():
            raise ValueError(f"{ann / name}: annotation directory is missing")
        masks = [ann / name / f"{f.stem}.png" for f in frames]
        for m in masks:
            if not m.is_file():
                raise ValueError(f"{m}: annotation of frame {m.stem} is missing")
        videos.append(Video(name, frames, masks=list(masks)))
    return videos


def read_vip(root: str | Path, split_file: str = "lists/val_videos.txt") -> list[Video]:
    """VIP (VIP_Fine): Images/<video>/*.jpg, Annotations/Category_ids/<video>/*.png, a split list.

    The first frame must be annotated; later frames are scored where annotated.
    """
    root = Path(root)
    images, ann = root / "Images", root / "Annotations" / "Category_ids"
    split_path = root / split_file
    _require([root, images, ann, split_path], f"VIP root {root}")
    videos = []
    for name in _split_names(split_path):
        frames = _frames_in(images / name)
        masks: list[Path | None] = []
        for f in frames:
            m = ann / name / f"{f.stem}.png"
            masks.append(m if m.is_file() else None)
        if masks[0] is None:
            raise ValueError(f"{ann / name / (frames[0].stem + '.png')}: first-frame annotation is missing")
        videos.append(Video(name, frames, masks=masks))
    return videos


def read_joint_mat(path: Path) -> np.ndarray:
    """``joint_positions.mat`` -> [T, J, 2] 0-based (x, y); ``pos_img`` is [2, J, T], 1-based."""
    from scipy.io import loadmat  # only JHMDB needs scipy

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a bad file
        raise ValueError(f"{path}: cannot read as a MATLAB file ({exc})") from None
    pos = mat.get("pos_img")
    if pos is None or pos.ndim != 3 or pos.shape[0] != 2:
        shape = None if pos is None else pos.shape
        raise ValueError(f"{path}: expected key 'pos_img' of shape [2, J, T], got {shape}")
    return np.transpose(pos.astype(np.float64), (2, 1, 0)) - 1.0


def read_jhmdb(root: str | Path, split_file: str = "val_list.txt") -> list[Video]:
    """JHMDB: a split file whose lines are ``<frames dir> <joint_positions.mat>`` (relative to
    ROOT or absolute), or ``<class>/<video>`` resolved to ``Rename_Images/<class>/<video>`` and
    ``joint_positions/<class>/<video>/joint_positions.mat``.
    """
    root = Path(root)
    split_path = root / split_file
    _require([root, split_path], f"JHMDB root {root}")
    videos = []
    for line in _split_names(split_path):
        parts = line.split()
        if len(parts) == 1:
            frames_dir = root / "Rename_Images" / parts[0]
            mat = root / "joint_positions" / parts[0] / "joint_positions.mat"
        elif len(parts) == 2:
            frames_dir, mat = root / parts[0], root / parts[1]
            if mat.is_dir():
                mat = mat / "joint_positions.mat"
        else:
            raise ValueError(f"{split_path}: line '{line}' is not '<frames> <mat>' or '<class>/<video>'")
        frames = _frames_in(frames_dir)
        if not mat.is_file():
            raise ValueError(f"{mat}: joint annotation file is missing")
        joints = read_joint_mat(mat)
        n = min(len(frames), len(joints))
        if n == 0:
            raise ValueError(f"{mat}: no annotated frames")
        name = f"{frames_dir.parent.name}/{frames_dir.name}"
        videos.append(Video(name, frames[:n], joints=joints[:n]))
    return videos


def read_index_png(path: Path) -> np.ndarray:
    """A palette ('P') or grayscale ('L') PNG as a uint8 array of label ids [H, W]."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{path}: mode {im.mode}, expected a palette or 8-bit index PNG")
            return np.array(im, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC / DAVIS colour map as a flat [r, g, b, ...] list: bits of the label
    index are spread over the high bits of the three channels."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_index_png(path: Path, mask: np.ndarray) -> None:
    """Write label ids [H, W] as a palette PNG with the DAVIS colour map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def load_frames(paths: list[Path], device: torch.device) -> list[torch.Tensor]:
    """Decode frames to uint8 RGB tensors [3, H, W] on ``device``.

    JPEGs are decoded in one batch on the device (nvJPEG on CUDA, libjpeg-turbo on CPU);
    other formats are decoded on the CPU and moved.
    """
    datas = []
    for p in paths:
        try:
            datas.append(read_file(str(p)))
        except RuntimeError as exc:
            raise ValueError(f"{p}: cannot read ({exc})") from None
    if all(p.suffix.lower() in (".jpg", ".jpeg") for p in paths):
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            raise ValueError(f"{paths[0].parent}: JPEG decode failed ({exc})") from None
    out = []
    for p, d in zip(paths, datas):
        try:
            out.append(decode_image(d, mode=ImageReadMode.RGB).to(device))
        except RuntimeError as exc:
            raise ValueError(f"{p}: cannot decode image ({exc})") from None
    return out
