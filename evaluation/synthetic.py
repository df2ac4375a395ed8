"""Small generated benchmarks in the official layouts (for tests, demos and throughput runs),
and a colour feature that is "perfect" on them.

Scenes: a textured blue-grey background with a red disc and a green box moving across it;
frames are real JPEG (DAVIS, VIP) or PNG (JHMDB) files, masks palette / grayscale PNGs.

    python -m evaluation.synthetic OUT_DIR   # writes OUT_DIR/{davis,jhmdb,vip}
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.datasets import mark_generated, write_index_png

OBJECT_RGB = np.array([[60, 70, 110], [220, 40, 40], [40, 200, 60]], dtype=np.float32)  # bg, 1, 2
JOINT_RGB = np.array([[60, 70, 110]] + [[(37 * j) % 256, (91 * j + 80) % 256, (151 * j + 40) % 256]
                                        for j in range(1, 16)], dtype=np.float32)


def scene(t: int, T: int, hw: tuple[int, int], seed: int, snap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frame t of a sequence: RGB uint8 [H, W, 3] and label ids [H, W] (0 bg, 1 disc, 2 box).

    ``snap`` > 0 draws both objects as boxes on a ``snap``-pixel grid (exactly representable
    by features of that stride).
    """
    H, W = hw
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12, size=(H, W, 1))
    ids = np.zeros((H, W), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    s = t / max(T - 1, 1)
    cx, cy, r = W * (0.25 + 0.4 * s), H * (0.3 + 0.05 * (seed % 3)), H * 0.2
    bx, by, bh, bw = W * 0.6, H * (0.45 + 0.3 * s), H * 0.3, W * 0.2
    if snap:
        def q(v: float) -> int:
            return int(round(v / snap)) * snap

        ids[q(cy - r) : q(cy + r), q(cx - r) : q(cx + r)] = 1
        ids[q(by) : q(by + bh), q(bx) : q(bx + bw)] = 2
    else:
        ids[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] = 1
        ids[int(by) : int(by + bh), int(bx) : int(bx + bw)] = 2
    img = np.where(ids[..., None] > 0, OBJECT_RGB[ids] + texture * 0.3, OBJECT_RGB[0] + texture)
    return np.clip(img, 0, 255).astype(np.uint8), ids


def write_davis(root: Path, n_seq: int = 2, T: int = 8, hw: tuple[int, int] = (128, 224),
                snap: int = 0) -> Path:
    """A DAVIS-2017 tree: JPEGImages/480p, Annotations/480p (palette PNG), ImageSets/2017/val.txt."""
    names = [f"synth{i}" for i in range(n_seq)]
    for i, name in enumerate(names):
        for t in range(T):
            img, ids = scene(t, T, hw, seed=i, snap=snap)
            jpg = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(jpg, quality=92)
            write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
    split = root / "ImageSets" / "2017" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(names) + "\n")
    mark_generated(root, "evaluation.synthetic: coloured disc and box; colour alone solves it")
    return root


def write_vip(root: Path, n_seq: int = 2, T: int = 6, hw: tuple[int, int] = (128, 224)) -> Path:
    """A VIP_Fine tree: Images/<v>/*.jpg, Annotations/Category_ids/<v>/*.png, lists/val_videos.txt."""
    names = [f"vid{i}" for i in range(n_seq)]
    for i, name in enumerate(names):
        for t in range(T):
            img, ids = scene(t, T, hw, seed=i)
            (root / "Images" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "Images" / name / f"{t:06d}.jpg", quality=92)
            ann = root / "Annotations" / "Category_ids" / name
            ann.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids * 5, mode="L").save(ann / f"{t:06d}.png")  # part ids 0, 5, 10
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / "val_videos.txt").write_text("\n".join(names) + "\n")
    mark_generated(root, "evaluation.synthetic: coloured disc and box; colour alone solves it")
    return root


def write_jhmdb(root: Path, n_seq: int = 2, T: int = 6, hw: tuple[int, int] = (240, 320),
                snap: int = 0) -> Path:
    """A JHMDB tree: Rename_Images/<class>/<video>/%05d.png, joint_positions/.../joint_positions.mat
    (pos_img [2, 15, T], 1-based) and a split file of ``<class>/<video>`` lines.

    Joints are coloured dots (13 px); ``snap`` > 0 makes them ``snap``-pixel cells on that grid,
    moving by whole cells (exactly representable by features of that stride).
    """
    from scipy.io import savemat

    H, W = hw
    lines = []
    for i in range(n_seq):
        rel = f"wave/clip{i}"
        rng = np.random.default_rng(i)
        base = np.stack([rng.uniform(0.2 * W, 0.7 * W, 15), rng.uniform(0.2 * H, 0.7 * H, 15)], 1)
        pos = np.zeros((2, 15, T))
        for t in range(T):
            img = np.broadcast_to(JOINT_RGB[0], (H, W, 3)).copy()
            if snap:
                corner = np.floor(base / snap) * snap + np.array([snap * t, snap * (t // 2)])
                joints = corner + (snap - 1) / 2
                for j, (x, y) in enumerate(corner.astype(int)):
                    img[y : y + snap, x : x + snap] = JOINT_RGB[j + 1]
            else:
                joints = np.floor(base + np.array([3.0 * t, 2.0 * t]))
                for j, (x, y) in enumerate(joints.astype(int)):
                    img[y - 6 : y + 7, x - 6 : x + 7] = JOINT_RGB[j + 1]
            out = root / "Rename_Images" / rel / f"{t + 1:05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(out)
            pos[:, :, t] = (joints + 1).T  # 1-based, the dot's centre
        mat = root / "joint_positions" / rel / "joint_positions.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(str(mat), {"pos_img": pos})
        lines.append(rel)
    (root / "val_list.txt").write_text("\n".join(lines) + "\n")
    mark_generated(root, "evaluation.synthetic: coloured joint dots; colour alone solves it")
    return root


def colour_feature(colours: np.ndarray, stride: int = 8, position: float = 0.05):
    """Feature callable [B, 3, H, W] (ImageNet-normalised) -> [B, H/stride, W/stride, K + 2]:
    one-hot of the nearest reference colour of each cell's mean colour, plus a weak position code."""
    ref = torch.as_tensor(colours / 255.0, dtype=torch.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(x: torch.Tensor) -> torch.Tensor:
        rgb = x * std.to(x.device) + mean.to(x.device)
        cell = F.avg_pool2d(rgb, stride).permute(0, 2, 3, 1)  # [B, h, w, 3]
        nearest = torch.cdist(cell.reshape(-1, 3), ref.to(x.device)).argmin(1).view(cell.shape[:3])
        onehot = F.one_hot(nearest, len(ref)).float()
        B, h, w = nearest.shape
        ys = torch.linspace(0, 1, h, device=x.device).view(1, h, 1, 1).expand(B, h, w, 1)
        xs = torch.linspace(0, 1, w, device=x.device).view(1, 1, w, 1).expand(B, h, w, 1)
        return torch.cat([onehot, position * ys, position * xs], dim=-1)

    return features


def random_feature(dim: int = 32, stride: int = 8, seed: int = 0):
    """Feature callable returning noise unrelated to the image: [B, H/stride, W/stride, dim]."""
    gen = torch.Generator().manual_seed(seed)

    def features(x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        return torch.randn(B, H // stride, W // stride, dim, generator=gen).to(x.device)

    return features


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m evaluation.synthetic OUT_DIR")
    out = Path(sys.argv[1])
    write_davis(out / "davis")
    write_jhmdb(out / "jhmdb")
    write_vip(out / "vip")
    print(f"wrote {out}/davis, {out}/jhmdb, {out}/vip")
