"""Engine and output options: bad values are one-line errors, and retried tasks never count a clip twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from shards.config import ShardsConfig
from shards.engine import LocalEngine, forward_once, make_engine


@pytest.mark.parametrize("args, message", [
    (["--data", "kinetics", "--root", "gs://bucket/kinetics", "--out", "OUT"],
     "ROOT gs://bucket/kinetics: remote paths (gs://) are not supported"),
    (["--data", "kinetics", "--root", "ROOT", "--out", "nosuchfs://bucket/shards"],
     "OUT nosuchfs://bucket/shards: unknown file system 'nosuchfs://'"),
    (["--data", "kinetics", "--root", "ROOT", "--out", "memory://shards"],
     "OUT memory://shards: the memory:// file system lives inside one process"),
    (["--data", "kinetics", "--root", "ROOT", "--out", "file://OUT", "--stage", "s3://bucket/stage"],
     "STAGE s3://bucket/stage: must be a local directory"),
    (["--data", "sample", "--out", "OUT", "--ray-address", "10.0.0.1:6379"], "RAY_ADDRESS needs ENGINE=ray"),
    (["--data", "sample", "--out", "OUT", "--engine", "ray", "--max-retries", "-1"], "MAX_RETRIES must be >= 0"),
])
def test_bad_engine_and_path_options_are_one_line_errors(tmp_path: Path, capsys, args, message) -> None:
    args = [a.replace("ROOT", str(tmp_path)).replace("OUT", str(tmp_path / "out")) for a in args]
    assert shards_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_out_on_a_store_whose_package_is_missing_names_the_package(tmp_path: Path, capsys) -> None:
    assert shards_main(["--data", "kinetics", "--root", str(tmp_path), "--out", "gs://bucket/shards"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "OUT gs://bucket/shards: the gs:// file system needs a package that is not installed" in err
    assert "pip install gcsfs" in err


def test_make_engine_picks_the_named_engine() -> None:
    local = make_engine(ShardsConfig(engine="local", workers=3))
    assert isinstance(local, LocalEngine) and local.workers == 3
    with pytest.raises(ValueError, match="ENGINE must be 'local' or 'ray'"):
        make_engine(ShardsConfig(engine="spark"))  # type: ignore[arg-type]


def test_events_of_a_retried_task_are_forwarded_once() -> None:
    seen: list[dict] = []
    forwarded: set[tuple[str, int]] = set()
    first_try = [("val-000001", i, {"ok": True, "bytes": 10 * i}) for i in range(3)]
    second_try = [("val-000001", i, {"ok": True, "bytes": 10 * i}) for i in range(5)]
    other = [("val-000002", 0, {"ok": False, "bytes": 0})]
    forward_once(first_try + other, forwarded, seen.append)
    forward_once(second_try, forwarded, seen.append)
    assert [e["bytes"] for e in seen] == [0, 10, 20, 0, 30, 40]
