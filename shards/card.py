"""The dataset card (``OUT/dataset.json``): what readers trust instead of repeating constants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shards import FORMAT_VERSION
from shards.storage import Output


def read_card(root: str | Path) -> dict[str, Any]:
    """The card of a finished shards directory (a local path or an fsspec URL); ValueError if missing,
    unreadable or of another format version."""
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
    if card.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {card.get('format_version')} is not {FORMAT_VERSION}")
    return card


def unused_files(split: dict[str, Any]) -> int:
    """Video files of a card's split that were not sharded: no CSV row names them, or they repeat a clip id
    (listed with the reason in skipped.parquet)."""
    return split.get("unlisted_files", 0) + split.get("duplicate_files", 0)
