"""Find the clips of a collection: Kinetics CSVs + video files, or a class-folder tree.

Every split becomes a sorted list of :class:`Clip` (sorted by key, so the work plan is the same
on every run), plus what the annotations list but the disk lacks, and what the disk has twice.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = frozenset(
    [".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp", ".ogv", ".wmv"]
)
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Clip:
    """One source video and what the annotations say about it."""

    key: str  # dot-free, unique within the split
    split: str
    path: str  # absolute path of the video file
    source: str  # path relative to ROOT (recorded in the shards)
    label: str  # "" when unknown (Kinetics test split)
    youtube_id: str = ""
    time_start: float | None = None
    time_end: float | None = None


@dataclass
class SplitSources:
    """The clips of one split and the bookkeeping of what could not be matched."""

    split: str
    clips: list[Clip] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)  # listed, not on disk
    skipped: list[dict[str, str]] = field(default_factory=list)  # on disk, not used: split, source, reason
    classes: list[str] = field(default_factory=list)  # label names in id order (empty: sorted names)

    def count_skipped(self, reason_start: str) -> int:
        """How many skipped files have a reason starting with ``reason_start``."""
        return sum(s["reason"].startswith(reason_start) for s in self.skipped)


def _video_files(folder: Path) -> list[Path]:
    """Every video file under ``folder`` (recursively), sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def safe_key(stem: str, rel: str) -> str:
    """A dot-free WebDataset key for ``stem``; unsafe names get a hash of their path."""
    clean = _KEY_SAFE.sub("_", stem)
    if clean == stem and clean:
        return clean
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{clean[:80]}_{digest}"


def clip_stem(youtube_id: str, start: float, end: float) -> str:
    """Kinetics file stem ``<ytid>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def find_csvs(root: Path, explicit: list[str]) -> list[Path]:
    """The annotation CSVs: given ones, else ROOT/annotations/*.csv, else ROOT/*.csv."""
    if explicit:
        paths = [Path(p) for p in explicit]
        for p in paths:
            if not p.is_file():
                raise ValueError(f"CSV {p}: no such file")
        return paths
    for folder in (root / "annotations", root):
        found = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if found:
            return found
    raise ValueError(f"ROOT {root}: no annotation CSV in {root}/annotations/ or {root}/ (give CSV=...)")


def split_name(csv_path: Path, rows: list[dict[str, str]]) -> str:
    """The split's name: the CSV's ``split`` column when it names one split, else from the file
    name (``kinetics400_val.csv`` -> ``val``)."""
    values = {(r.get("split") or "").strip() for r in rows} - {""}
    if len(values) == 1:
        return values.pop()
    return re.sub(r"^kinetics\d*_", "", csv_path.stem)


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            need = {"youtube_id", "time_start", "time_end"} - set(header)
            if need:
                raise ValueError(f"CSV {csv_path}: missing column(s) {', '.join(sorted(need))}")
            reader.fieldnames = header
            return list(reader)
    except UnicodeDecodeError:
        raise ValueError(f"CSV {csv_path}: not UTF-8 text") from None


def _split_folder(root: Path, split: str, csv_path: Path) -> Path | None:
    stem = re.sub(r"^kinetics\d*_", "", csv_path.stem)
    for name in [split, stem, f"videos_{split}", f"videos_{stem}"]:
        if (root / name).is_dir():
            return root / name
    return None


def _kinetics_split(root: Path, csv_path: Path, rows: list[dict[str, str]], limit: int) -> SplitSources:
    split = split_name(csv_path, rows)
    out = SplitSources(split)
    folder = _split_folder(root, split, csv_path)
    by_stem: dict[str, Path] = {}
    if folder is not None:
        for path in _video_files(folder):
            stem = path.stem
            if stem in by_stem:
                out.skipped.append({"split": split, "source": str(path.relative_to(root)),
                                    "reason": f"duplicate: {by_stem[stem].relative_to(root)} has the same clip id"})
            else:
                by_stem[stem] = path
    listed: set[str] = set()
    clips: dict[str, Clip] = {}
    for line, row in enumerate(rows, start=2):
        try:
            start, end = float(row["time_start"]), float(row["time_end"])
        except (TypeError, ValueError):
            raise ValueError(f"CSV {csv_path}:{line}: time_start/time_end are not numbers") from None
        ytid = (row.get("youtube_id") or "").strip()
        stem = clip_stem(ytid, start, end)
        if stem in listed:
            continue  # the same clip listed twice: one sample
        listed.add(stem)
        label = (row.get("label") or "").strip()
        path = by_stem.get(stem)
        if path is None:
            out.missing.append({"split": split, "key": stem, "label": label, "youtube_id": ytid})
            continue
        rel = str(path.relative_to(root))
        key = safe_key(stem, rel)
        clips[key] = Clip(key, split, str(path), rel, label, ytid, start, end)
    for stem in sorted(set(by_stem) - listed):
        out.skipped.append({"split": split, "source": str(by_stem[stem].relative_to(root)),
                            "reason": f"unlisted: no row of {csv_path.name} names this clip"})
    out.skipped.sort(key=lambda s: s["source"])
    out.clips = [clips[k] for k in sorted(clips)]
    if limit:
        out.clips = out.clips[:limit]
    return out


def _folder_split(root: Path, split: str, limit: int) -> SplitSources:
    out = SplitSources(split)
    clips: dict[str, Clip] = {}
    for path in _video_files(root / split):
        rel = str(path.relative_to(root))
        parts = path.relative_to(root / split).parts
        label = parts[0] if len(parts) > 1 else ""
        key = safe_key(path.stem, rel)
        if key in clips:
            key = safe_key(path.stem + "\x00", rel)  # same name in two classes: hash keeps both
        clips[key] = Clip(key, split, str(path), rel, label)
    out.clips = [clips[k] for k in sorted(clips)]
    if limit:
        out.clips = out.clips[:limit]
    return out


def discover(data: str, root: str, csvs: list[str], splits: list[str], limit: int) -> list[SplitSources]:
    """All splits of a collection, filtered to ``splits`` when given.

    Raises ValueError (one line, naming the path) when ROOT or a CSV is missing or malformed.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"ROOT {root}: no such directory")
    if data == "folder":
        names = sorted(p.name for p in root_path.iterdir() if p.is_dir())
        chosen = [n for n in names if not splits or n in splits]
        for s in splits:
            if s not in names:
                raise ValueError(f"split '{s}': no folder {root_path / s}")
        return [_folder_split(root_path, s, limit) for s in chosen]
    tables = [(p, _read_rows(p)) for p in find_csvs(root_path, csvs)]
    known = [split_name(p, rows) for p, rows in tables]
    for s in splits:
        if s not in known:
            raise ValueError(f"split '{s}': no annotation CSV for it (found: {', '.join(known)})")
    if len(set(known)) != len(known):
        raise ValueError(f"ROOT {root}: two annotation CSVs name the same split ({', '.join(known)}); give CSV=...")
    return [_kinetics_split(root_path, p, rows, limit) for (p, rows), name in zip(tables, known)
            if not splits or name in splits]
