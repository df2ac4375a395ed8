"""Shared fixtures: the embedded sample collection and its shards, built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shards.cli import main as shards_main
from shards.sample import build_sample
from tests.faults.common import TWO_PER_SHARD, output_files, shard_locally


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where CUDA cannot start."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample collection in Kinetics layout (CSV + class folders + broken files)."""
    return build_sample(tmp_path_factory.mktemp("sample") / "kinetics")


@pytest.fixture(scope="session")
def sample_shards(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the sample collection at the default settings, 4 clips a shard.

    Layout: ``<dir>/<split>/<split>-%06d.tar`` + ``.idx`` + ``manifest.parquet``, and
    ``dataset.json``, ``labels.json``, ``rejected.parquet`` at the top.
    """
    out = tmp_path_factory.mktemp("shards") / "sample"
    code = shards_main(["--data", "kinetics", "--root", str(sample_root), "--out", str(out),
                        "--max-per-shard", "4", "--workers", "2"])
    if code != 0:
        raise RuntimeError(f"building the sample shards failed with exit code {code}")
    return out


@pytest.fixture(scope="session")
def clip_shards(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample collection sharded for the clip methods: source frame rate, 128-px short side."""
    out = tmp_path_factory.mktemp("clip_shards") / "sample"
    code = shards_main(["--data", "kinetics", "--root", str(sample_root), "--out", str(out),
                        "--max-per-shard", "4", "--workers", "2", "--fps", "0", "--size", "128"])
    if code != 0:
        raise RuntimeError(f"building the clip shards failed with exit code {code}")
    return out


@pytest.fixture(scope="session")
def val_test_reference(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Output files of a local run (ENGINE=local, local OUT) with ``TWO_PER_SHARD``: what the Ray
    engine and a remote OUT must reproduce byte for byte."""
    return output_files(shard_locally(sample_root, tmp_path_factory.mktemp("local_ref") / "out", TWO_PER_SHARD))


@pytest.fixture(scope="session")
def action_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated UCF101- and HMDB51-layout collections (5 classes, 6 videos each, broken entries)."""
    from evaluation.action_synthetic import write_hmdb51, write_ucf101

    base = tmp_path_factory.mktemp("action")
    return {"ucf101": write_ucf101(base / "ucf101"), "hmdb51": write_hmdb51(base / "hmdb51")}


@pytest.fixture(scope="session")
def action_shards(action_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both generated collections sharded at the action defaults (FPS 0, SIZE 128), 8 videos a shard."""
    out = {}
    for name, root in action_roots.items():
        out[name] = tmp_path_factory.mktemp("action_shards") / name
        code = shards_main(["--data", name, "--root", str(root), "--out", str(out[name]),
                            "--max-per-shard", "8", "--workers", "2"])
        if code != 0:
            raise RuntimeError(f"sharding the generated {name} failed with exit code {code}")
    return out
