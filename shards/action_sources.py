"""UCF101 and HMDB51 in their official layouts: every video once, and its role in each official split.

    UCF101  ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
            ROOT/ucfTrainTestlist/classInd.txt      "<id> <Class>", ids 1..101
            ROOT/ucfTrainTestlist/trainlist0k.txt   "<Class>/<file>.avi <id>"   (k = 1, 2, 3)
            ROOT/ucfTrainTestlist/testlist0k.txt    "<Class>/<file>.avi"
    HMDB51  ROOT/<class>/<video>.avi
            ROOT/testTrainMulti_7030_splits/<class>_test_split<k>.txt  "<video>.avi <1|2|0>"
            (1 = train, 2 = test, 0 = unused)

A video plays a role in each of the three official splits, so it is sharded once, into one
shard split named ``videos``, and the roles are a table written next to the shards:
``OUT/split_roles.parquet`` with one row per (official split, video): split (1..3), key, role
(``train``, ``test`` or ``unused``), label, label_id, source. A video listed twice for the same
split (in two lists, or twice in one) is an error naming both lines; a video that a split does
not list is ``unused`` in it. ``OUT/action.json`` names the dataset, its classes in id order,
the role counts and, for a generated collection, what generated it (the text of its
``GENERATED.txt`` marker, see ``evaluation.datasets.mark_generated``).

Class ids are 0-based: UCF101's classInd.txt id minus one (classInd is not in Python sort
order: JumpingJack comes before JumpRope); HMDB51's sorted class names (those of the split files,
the same as the sorted class folders of the official release).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from shards.sources import VIDEO_EXTENSIONS, Clip, SplitSources, safe_key

SHARD_SPLIT = "videos"
OFFICIAL_SPLITS = (1, 2, 3)
ROLES = ("train", "test", "unused")
ACTION_DATA = ("ucf101", "hmdb51")
_HMDB_FILE = re.compile(r"^(.+)_test_split(\d)\.txt$")
_HMDB_ROLE = {"1": "train", "2": "test", "0": "unused"}


@dataclass
class Listing:
    """One line of a split file: video ``rel`` (relative to the video folder) plays ``role``."""

    split: int
    rel: str
    label: str
    role: str
    where: str  # "file:line"


@dataclass
class ActionCollection:
    """Everything the sharder needs, plus the split-role table to write beside the shards."""

    dataset: str
    classes: list[str]  # in id order
    sources: SplitSources
    roles: list[dict] = field(default_factory=list)  # split, key, role, label, label_id, source
    generated: str | None = None  # what generated the collection (None: real data)

    def summary(self) -> dict:
        """The content of ``OUT/action.json``."""
        counts = {str(k): {r: sum(1 for x in self.roles if x["split"] == k and x["role"] == r) for r in ROLES}
                  for k in OFFICIAL_SPLITS}
        return {"dataset": self.dataset, "shard_split": SHARD_SPLIT, "classes": self.classes,
                "num_classes": len(self.classes), "roles": counts, "generated": self.generated}


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a split file as (line number, whitespace-split fields)."""
    if not path.is_file():
        raise ValueError(f"{path}: split file missing")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def ucf101_classes(list_dir: Path) -> list[str]:
    """Class names in classInd.txt order; ids must be 1..N in sequence."""
    path = list_dir / "classInd.txt"
    classes = []
    for n, fields in _lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<id> <Class>', got {' '.join(fields)!r}")
        if int(fields[0]) != len(classes) + 1:
            raise ValueError(f"{path}:{n}: class id {fields[0]} out of sequence (expected {len(classes) + 1})")
        classes.append(fields[1])
    if not classes:
        raise ValueError(f"{path}: no classes")
    return classes


def ucf101_listings(list_dir: Path, classes: list[str]) -> list[Listing]:
    """Every line of trainlist0k.txt / testlist0k.txt, checked against classInd.txt."""
    ids = {c: i + 1 for i, c in enumerate(classes)}
    out = []
    for k in OFFICIAL_SPLITS:
        for role in ("train", "test"):
            path = list_dir / f"{role}list{k:02d}.txt"
            for n, fields in _lines(path):
                where = f"{path}:{n}"
                rel = fields[0].replace("\\", "/")
                label = rel.split("/")[0] if "/" in rel else ""
                if label not in ids:
                    raise ValueError(f"{where}: '{rel}' is not in a class folder named in classInd.txt")
                if role == "train" and (len(fields) != 2 or not fields[1].isdigit()):
                    raise ValueError(f"{where}: expected '<Class>/<video> <class id>'")
                if role == "train" and int(fields[1]) != ids[label]:
                    raise ValueError(f"{where}: class id {fields[1]} but classInd.txt gives {label} id {ids[label]}")
                if role == "test" and len(fields) != 1:
                    raise ValueError(f"{where}: expected '<Class>/<video>' only")
                out.append(Listing(k, rel, label, role, where))
    return out


def hmdb51_listings(split_dir: Path) -> tuple[list[str], list[Listing]]:
    """Sorted class names and every line of <class>_test_split<k>.txt."""
    if not split_dir.is_dir():
        raise ValueError(f"{split_dir}: split folder missing (the official testTrainMulti_7030_splits)")
    files: dict[tuple[str, int], Path] = {}
    for path in sorted(split_dir.iterdir()):
        m = _HMDB_FILE.match(path.name)
        if m and int(m.group(2)) in OFFICIAL_SPLITS:
            files[(m.group(1), int(m.group(2)))] = path
    classes = sorted({c for c, _ in files})
    if not classes:
        raise ValueError(f"{split_dir}: no <class>_test_split<k>.txt files")
    out = []
    for label in classes:
        for k in OFFICIAL_SPLITS:
            path = files.get((label, k), split_dir / f"{label}_test_split{k}.txt")
            for n, fields in _lines(path):
                if len(fields) != 2 or fields[1] not in _HMDB_ROLE:
                    raise ValueError(f"{path}:{n}: expected '<video> <1|2|0>' (1 train, 2 test, 0 unused)")
                out.append(Listing(k, f"{label}/{fields[0]}", label, _HMDB_ROLE[fields[1]], f"{path}:{n}"))
    return classes, out


def check_one_role(listings: list[Listing]) -> dict[tuple[int, str], Listing]:
    """(split, video) -> its listing; a second listing of the same video in a split is an error."""
    seen: dict[tuple[int, str], Listing] = {}
    for item in listings:
        first = seen.get((item.split, item.rel))
        if first is not None:
            raise ValueError(f"{item.where}: '{item.rel}' is listed again for split {item.split} "
                             f"(already {first.role} at {first.where}); a video needs exactly one role per split")
        seen[(item.split, item.rel)] = item
    return seen


def _videos_on_disk(folder: Path, skip: set[str]) -> dict[str, Path]:
    """``<class>/<file>`` -> path for every video file one folder deep under ``folder``."""
    found = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in skip):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
                found[f"{class_dir.name}/{path.name}"] = path
    return found


def collect(dataset: str, video_dir: Path, root: Path, classes: list[str], listings: list[Listing],
            limit: int) -> ActionCollection:
    """Match listings with the files: clips (each video once), missing, unlisted, and the role table."""
    roles_of = check_one_role(listings)
    on_disk = _videos_on_disk(video_dir, {"testTrainMulti_7030_splits", "ucfTrainTestlist"})
    label_of = {item.rel: item.label for item in listings}
    src = SplitSources(SHARD_SPLIT, classes=list(classes))
    clips: dict[str, Clip] = {}
    key_of: dict[str, str] = {}
    for rel in sorted(label_of):
        path = on_disk.get(rel)
        stem = Path(rel).stem
        if path is None:
            src.missing.append({"split": SHARD_SPLIT, "key": stem, "label": label_of[rel], "youtube_id": ""})
            continue
        source = str(path.relative_to(root))
        key = safe_key(stem, source)
        if key in clips:  # the same file name in two class folders
            key = safe_key(stem + "\x00", source)
        clips[key] = Clip(key, SHARD_SPLIT, str(path), source, label_of[rel])
        key_of[rel] = key
    for rel in sorted(set(on_disk) - set(label_of)):
        src.skipped.append({"split": SHARD_SPLIT, "source": str(on_disk[rel].relative_to(root)),
                            "reason": "unlisted: no line of the official split files names this video"})
    src.clips = [clips[k] for k in sorted(clips)]
    if limit:
        src.clips = src.clips[:limit]
    kept = {c.key for c in src.clips}
    ids = {c: i for i, c in enumerate(classes)}
    roles = []
    for rel, key in sorted(key_of.items(), key=lambda kv: kv[1]):
        if key not in kept:
            continue
        for k in OFFICIAL_SPLITS:
            item = roles_of.get((k, rel))
            roles.append({"split": k, "key": key, "role": item.role if item else "unused",
                          "label": label_of[rel], "label_id": ids[label_of[rel]],
                          "source": clips[key].source})
    roles.sort(key=lambda r: (r["split"], r["key"]))
    from evaluation.datasets import generated_note  # the benchmarks' one marker convention

    return ActionCollection(dataset, list(classes), src, roles, generated_note(root))


def discover_action(dataset: str, root: str, limit: int = 0) -> ActionCollection:
    """Read UCF101 or HMDB51 at ``root`` (layouts in the module docstring); ValueError naming the file."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"ROOT {root}: no such directory")
    if dataset == "ucf101":
        video_dir, list_dir = root_path / "UCF-101", root_path / "ucfTrainTestlist"
        for d in (video_dir, list_dir):
            if not d.is_dir():
                raise ValueError(f"ROOT {root}: no {d.name}/ folder (expected UCF-101/ and ucfTrainTestlist/)")
        classes = ucf101_classes(list_dir)
        listings = ucf101_listings(list_dir, classes)
    elif dataset == "hmdb51":
        video_dir = root_path
        classes, listings = hmdb51_listings(root_path / "testTrainMulti_7030_splits")
    else:
        raise ValueError(f"DATA={dataset}: not an action-recognition collection ({', '.join(ACTION_DATA)})")
    return collect(dataset, video_dir, root_path, classes, listings, limit)


def write_action_tables(output, collection: ActionCollection) -> None:
    """OUT/split_roles.parquet and OUT/action.json (through the job's atomic write + upload)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shards.job import write_file

    schema = pa.schema([("split", pa.int64()), ("key", pa.string()), ("role", pa.string()),
                        ("label", pa.string()), ("label_id", pa.int64()), ("source", pa.string())])
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(collection.roles, schema=schema), buffer)
    write_file(output, "split_roles.parquet", buffer.getvalue())
    write_file(output, "action.json", json.dumps(collection.summary(), indent=1).encode())
