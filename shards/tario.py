"""Deterministic tar writing and the DALI WebDataset index format.

A shard's bytes depend only on its samples: every member has mtime 0, uid/gid 0, mode 0644.
The index file is the format DALI's ``wds2idx`` writes (version ``v1.2``): a header line
``v1.2 <samples>`` then one line per sample, ``<ext> <data offset> <size> <member name>``
repeated for each of its components.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

INDEX_VERSION = "v1.2"
BLOCK = 512


@dataclass(frozen=True)
class Member:
    """One tar member: its name and where its data lies in the tar."""

    name: str
    offset: int
    size: int

    @property
    def ext(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return base.split(".", 1)[1] if "." in base else ""

    @property
    def key(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return base.split(".", 1)[0]


class ShardTarWriter:
    """Append samples (dicts of extension -> bytes) to a tar; remembers member offsets."""

    def __init__(self, fileobj: IO[bytes]):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self.samples: list[list[Member]] = []

    def write(self, key: str, components: dict[str, bytes]) -> None:
        """Write one sample's components in the given order."""
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key '{key}': must be non-empty with no '.' or '/'")
        members = []
        for ext, data in components.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // BLOCK) * BLOCK
            members.append(Member(info.name, self._tar.offset - padded, len(data)))
        self.samples.append(members)

    def close(self) -> None:
        self._tar.close()


def index_text(samples: list[list[Member]]) -> str:
    """The wds2idx-format index for ``samples``."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def read_index(path: str | Path) -> list[list[Member]]:
    """Parse a wds2idx-format index; ValueError naming the file if it is malformed."""
    return parse_index(Path(path).read_text(), str(path))


def parse_index(text: str, path: str) -> list[list[Member]]:
    """Parse the text of a wds2idx-format index read from ``path``; ValueError naming it if malformed."""
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"index {path}: empty file")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"index {path}: bad header '{lines[0][:40]}' (expected '{INDEX_VERSION} <count>')")
    samples = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ValueError(f"index {path}:{n}: expected groups of '<ext> <offset> <size> <name>'")
        try:
            samples.append(
                [Member(parts[i + 3], int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)]
            )
        except ValueError:
            raise ValueError(f"index {path}:{n}: offset/size are not integers") from None
    if len(samples) != int(head[1]):
        raise ValueError(f"index {path}: header says {head[1]} samples, file has {len(samples)}")
    return samples


def check_index_against_tar(index_path: str | Path, tar_path: str | Path) -> list[list[Member]]:
    """Cheap consistency check: every member lies inside the tar. Raises ValueError."""
    samples = read_index(index_path)
    size = os.path.getsize(tar_path)
    for members in samples:
        for m in members:
            if m.offset < BLOCK or m.offset + m.size > size:
                raise ValueError(
                    f"shard {tar_path}: index {index_path} puts {m.name} at bytes "
                    f"{m.offset}..{m.offset + m.size}, beyond the tar's {size} bytes (truncated tar?)"
                )
    return samples
