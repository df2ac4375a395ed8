"""Teacher export/import and training checkpoints (atomic writes, keep last K, fallback).

Teacher file layout (the reference's): ``{"teacher": state_dict}`` with keys ``backbone.*``
(see ``model/vit.py``) and ``dino_head.*`` (see ``model/head.py``). The expected keys and
shapes for ViT-S/16 and ViT-B/16 are in ``model/tcore_teacher_keys.json``.

Training checkpoints are ``<dir>/ckpt_<step:09d>.pth`` dicts holding ``teacher`` (same layout
as the export), ``student``, ``optimizer``, ``centres``, ``step`` and ``config``, so
``load_teacher_backbone`` accepts them as well. ``CheckpointWriter`` writes them without
stalling training: the caller's thread only copies the state to host memory, a background
thread does the (atomic, fsynced) write.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.vit import TCoReViT

KEYS_FILE = Path(__file__).with_name("tcore_teacher_keys.json")
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pth$")


def reference_keys(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    """Expected ``(key, shape)`` list of the reference teacher for ``vit_small``/``vit_base``."""
    models = json.loads(KEYS_FILE.read_text())["models"]
    if arch not in models:
        raise ValueError(f"{KEYS_FILE.name}: no reference keys for arch '{arch}' (have {sorted(models)})")
    return [(k, tuple(s)) for k, s in models[arch]]


def teacher_state_dict(backbone: nn.Module, head: nn.Module) -> dict[str, torch.Tensor]:
    """``backbone.*`` + ``dino_head.*`` state dict on the CPU, in the reference naming."""
    def cpu(v: torch.Tensor) -> torch.Tensor:
        return v.detach() if v.is_meta else v.detach().cpu()

    out = {f"backbone.{k}": cpu(v) for k, v in backbone.state_dict().items()}
    out.update({f"dino_head.{k}": cpu(v) for k, v in head.state_dict().items()})
    return out


class _Sink:
    """A file whose ``write`` remembers its OS error: torch.save's zip writer turns a failed write
    (full disk, quota) into an unrelated "unexpected pos" RuntimeError."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``; OSError when a write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no partial file behind
        raise


def export_teacher(backbone: nn.Module, head: nn.Module, path: str | Path) -> None:
    """Write ``{"teacher": state_dict}`` (reference layout) atomically."""
    atomic_save({"teacher": teacher_state_dict(backbone, head)}, path)


def _strip_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_teacher_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The teacher state dict (``backbone.*``, ``dino_head.*``) stored in ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        sd = obj["teacher"]
    elif any(k.startswith(("backbone.", "module.backbone.")) for k in obj):
        sd = obj
    else:
        raise ValueError(f"{path}: no 'teacher' entry and no 'backbone.*' keys (top-level keys: {sorted(obj)[:8]})")
    return _strip_prefix(dict(sd))


def infer_arch(backbone_sd: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, Any]:
    """ViT hyper-parameters from tensor shapes (heads: 6 for width 384, 12 for 768, else width/64)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in backbone_sd:
            raise ValueError(f"{source}: missing key 'backbone.{key}', cannot infer the architecture")
    dim, _, _, patch = backbone_sd["patch_embed.proj.weight"].shape
    n_pos = backbone_sd["pos_embed"].shape[1] - 1
    side = int(n_pos**0.5)
    if side * side != n_pos:
        raise ValueError(f"{source}: backbone.pos_embed has {n_pos} patch positions, not a square grid")
    depth = 1 + max(int(m.group(1)) for k in backbone_sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    regs = backbone_sd["register_tokens"].shape[1] if "register_tokens" in backbone_sd else 0
    return {
        "img_size": side * patch,
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": {384: 6, 768: 12}.get(dim, max(1, dim // 64)),
        "mlp_ratio": backbone_sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "num_registers": regs,
    }


def check_state_dict(
    expected: dict[str, tuple[int, ...]], given: dict[str, torch.Tensor], source: str
) -> None:
    """Raise ValueError listing missing, unexpected and wrongly shaped keys, if any."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k} (got {tuple(given[k].shape)}, expected {tuple(expected[k])})"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        def show(names: list[str]) -> str:
            more = f" (+{len(names) - 20} more)" if len(names) > 20 else ""
            return ", ".join(names[:20]) + more

        parts = [f"{what}: {show(names)}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        raise ValueError(f"{source}: key/shape mismatch: " + "; ".join(parts))


def load_teacher_backbone(path: str | Path, device: str | torch.device = "cpu") -> TCoReViT:
    """Teacher backbone (eval mode) from a reference ``{"teacher": ...}`` file or our checkpoint."""
    sd = read_teacher_state(path)
    bb = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if not bb:
        raise ValueError(f"{path}: teacher state has no 'backbone.*' keys")
    model = TCoReViT(**infer_arch(bb, str(path)), device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict({f"backbone.{k}": s for k, s in expected.items()},
                     {f"backbone.{k}": v for k, v in bb.items()}, str(path))
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(device) for k, v in bb.items()}, strict=True)
    return model.eval()


def load_teacher_into(backbone: nn.Module, head: nn.Module | None, path: str | Path) -> None:
    """Load a teacher file into existing modules, with the same key/shape checks."""
    sd = read_teacher_state(path)
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    if head is not None:
        expected.update({f"dino_head.{k}": tuple(v.shape) for k, v in head.state_dict().items()})
    else:
        sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    check_state_dict(expected, sd, str(path))
    backbone.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("backbone.")})
    if head is not None:
        head.load_state_dict({k[10:]: v for k, v in sd.items() if k.startswith("dino_head.")})


# --------------------------------------------------------------------- training checkpoints


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint files in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | Path, step: int, keep: int) -> Path:
    """Atomically write ``ckpt_<step>.pth`` and delete all but the newest ``keep``."""
    path = Path(ckpt_dir) / f"ckpt_{step:09d}.pth"
    atomic_save(state, path)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def to_host(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts, lists, tuples) whose tensors are host copies that later
    in-place updates of the originals cannot reach. Device tensors are copied into pinned memory
    without blocking: synchronise the device before reading them."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.clone() if t.device.type == "cpu" else t.to("cpu", non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


class CheckpointWriteError(RuntimeError):
    """A training checkpoint could not be written (full disk, quota, permissions)."""


def write_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, keep: int) -> Path:
    """``save_checkpoint``, with an OS error turned into one line naming the file and what to do."""
    try:
        return save_checkpoint(state, ckpt_dir, step, keep)
    except OSError as exc:
        raise CheckpointWriteError(
            f"checkpoint {ckpt_dir / f'ckpt_{step:09d}.pth'} could not be written ({exc.strerror or exc}); "
            f"the earlier ones are whole: free space and re-run the same command to resume") from exc


class CheckpointWriter:
    """Checkpoints written in the background: ``save`` snapshots the state to host memory and
    returns; a thread writes it (``save_checkpoint``: atomic, keeps the newest ``keep``).

    At most one write is in flight: ``save`` first waits for the previous one. An error of the
    writer thread (``CheckpointWriteError``) is raised on the caller's thread by the next ``save``,
    ``wait`` or ``close``.
    """

    def __init__(self, ckpt_dir: str | Path, keep: int) -> None:
        self.ckpt_dir, self.keep = Path(ckpt_dir), keep
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def wait(self) -> Path | None:
        """Block until the write in flight (if any) is on disk; its path, or its error raised here."""
        fut, self._pending = self._pending, None
        return fut.result() if fut is not None else None

    def save(self, state: dict[str, Any], step: int) -> None:
        """Snapshot ``state`` (device tensors included) to host memory, then write it in the background."""
        self.wait()
        snap = to_host(state)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the pinned copies above have landed
        self._pending = self._pool.submit(write_checkpoint, snap, self.ckpt_dir, step, self.keep)

    def close(self) -> None:
        """Wait for the last write (raising its error), then stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


_REQUIRED = ("step", "student", "optimizer")
_REQUIRED_BY_METHOD = {"tcore": ("teacher", "centres")}  # a checkpoint without "method" is T-CoRe's


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """One training checkpoint; ValueError naming the file when it is unreadable or incomplete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    required = _REQUIRED + (_REQUIRED_BY_METHOD.get(state.get("method", "tcore"), ()) if isinstance(state, dict) else ())
    if not isinstance(state, dict) or any(k not in state for k in required):
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        raise ValueError(f"checkpoint {path} is unreadable (missing entries {missing})")
    return state


def load_latest_checkpoint(ckpt_dir: str | Path, log=print) -> dict[str, Any] | None:
    """Newest readable checkpoint; a corrupt/partial one is reported and the previous one used."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = read_checkpoint(path)
        except ValueError as exc:
            log(f"{exc}; trying the previous one")
            continue
        state["path"] = str(path)
        return state
    return None
