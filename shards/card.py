"""The dataset card (``OUT/dataset.json``): what readers trust instead of repeating constants.

Readers accept format v1 (no checksums; said once per shard set and process, on stderr) and v2
(per-frame CRC-32 and per-shard SHA-256, see shards/integrity.py).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards import FORMAT_VERSION, READABLE_VERSIONS
from shards.storage import Output

_told_v1: set[str] = set()  # shard sets already reported as v1 by this process


def read_card(root: str | Path) -> dict[str, Any]:
    """The card of a finished shards directory (a local path or an fsspec URL); ValueError if missing,
    unreadable or of a format version this reader does not know."""
    output = Output.open(str(root))
    path = output.display("dataset.json") if output.remote else str(Path(root) / "dataset.json")
    data = output.read_bytes("dataset.json")
    if data is None:
        raise ValueError(f"{path}: no dataset card (is {root} a shard directory written by `python -m shards`, "
                         "and has the job finished?)")
    try:
        card = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    version = card.get("format_version")
    if version not in READABLE_VERSIONS:
        newer = " (written by a newer sharder: update this code)" if isinstance(version, int) and \
            version > FORMAT_VERSION else ""
        raise ValueError(f"{path}: format_version {version!r} is not one this reader knows "
                         f"({', '.join(map(str, READABLE_VERSIONS))}){newer}")
    if not has_checksums(card) and path not in _told_v1:
        _told_v1.add(path)
        print(f"note: {path}: format v{version} shards carry no checksums, so a corrupt frame is found only if it "
              "fails to decode (re-shard to get format v2)", file=sys.stderr)
    return card


def has_checksums(card: dict[str, Any]) -> bool:
    """True when the card's shards carry per-frame CRC-32 members and per-shard SHA-256 (format >= 2)."""
    return card.get("format_version", 1) >= 2


def unused_files(split: dict[str, Any]) -> int:
    """Video files of a card's split that were not sharded: no CSV row names them, or they repeat a clip id
    (listed with the reason in skipped.parquet)."""
    return split.get("unlisted_files", 0) + split.get("duplicate_files", 0)


def read_rows(output: Output, rel: str) -> list[dict[str, Any]]:
    """The rows of the parquet table OUT/``rel``; ValueError naming it if it is missing."""
    data = output.read_bytes(rel)
    if data is None:
        raise ValueError(f"{output.display(rel)}: missing (has the job finished?)")
    return pq.read_table(io.BytesIO(data)).to_pylist()
