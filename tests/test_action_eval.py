"""Action-recognition evaluation: clip placement, retrieval recall against a hand computation, the
linear probe on separable and on random features, resume equality, and the command line on the
generated UCF101 / HMDB51 shards (retrieval, rescoring given features, linear probe on a T-CoRe
ViT, fine-tuning)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.action_config import ProbeConfig, RetrievalConfig
from evaluation.action_data import random_clip, uniform_clips
from evaluation.linear_probe import train_probe
from evaluation.retrieval import recall_at_k, score
from evaluation.train_loop import RunDir
from tools.eval_action import main

CPU = torch.device("cpu")
SMALL_CLIPS = ["features.clips.num_clips=2", "features.clips.clip_len=8", "features.batch_videos=8",
               "features.clips.resize=[72,96]", "features.clips.crop=64"]  # small clips: CPU tests


def test_uniform_and_random_clip_indices() -> None:
    idx = uniform_clips(100, 16, 4, 10)  # span 64: centres 32, 36, ..., 68
    assert idx.shape == (10, 16)
    np.testing.assert_array_equal(idx[:, 0], np.arange(0, 40, 4))
    np.testing.assert_array_equal(idx[3], 12 + 4 * np.arange(16))
    short = uniform_clips(20, 16, 4, 10)  # shorter than a span: one clip from 0, clamped to the end
    np.testing.assert_array_equal(short, np.tile(np.minimum(4 * np.arange(16), 19), (10, 1)))
    rng = np.random.default_rng(0)
    for _ in range(50):
        long = random_clip(100, 16, 2, rng)
        assert 0 <= long[0] < 100 - 32 and np.all(np.diff(long) == 2)
        padded = random_clip(10, 16, 2, rng)
        assert len(padded) == 16 and padded.min() >= 0 and padded.max() <= 9
        assert np.all(np.diff(padded) >= 0) and (padded[0] == 0 or padded[-1] == 9)


def test_recall_matches_a_hand_computation() -> None:
    # gallery: the four unit directions (classes 0..3) shifted by (10, 10); queries shifted by (-5, 3).
    # Centred and normalised, q0 = (1, .2) ranks g0, g1, g3, g2 (hit at 1); q1 = (-1, -.2) ranks
    # g2, g3, g1, g0 (its class 1 first at rank 3). Without the centring every cosine would be ~1.
    gallery = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32) + [10, 10]
    queries = np.array([[1, 0.2], [-1, -0.2]], np.float32) + [-5, 3]
    summary, sims, idx = score(gallery, np.array([0, 1, 2, 3]), queries, np.array([0, 1]),
                               RetrievalConfig(ks=(1, 2, 3, 4), neighbours=4, png_neighbours=4))
    assert summary == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0, "R@4": 1.0}
    np.testing.assert_array_equal(idx, [[0, 1, 3, 2], [2, 3, 1, 0]])
    c = 1 / np.sqrt(1.04)
    np.testing.assert_allclose(sims[0], [c, 0.2 * c, -0.2 * c, -c], atol=1e-6)
    # against a brute-force count on random data
    rng = np.random.default_rng(1)
    tr, te = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    ytr, yte = rng.integers(0, 4, 60), rng.integers(0, 4, 25)
    got, _, idx = score(tr, ytr, te, yte, RetrievalConfig(neighbours=1))
    trn = (tr - tr.mean(0)) / np.linalg.norm(tr - tr.mean(0), axis=1, keepdims=True)
    ten = (te - te.mean(0)) / np.linalg.norm(te - te.mean(0), axis=1, keepdims=True)
    order = np.argsort(-(ten @ trn.T), axis=1)
    for k in (1, 5, 10, 20, 50):
        assert got[f"R@{k}"] == pytest.approx(np.mean([yte[q] in ytr[order[q, :k]] for q in range(25)]))
    assert recall_at_k(order[:, :5], ytr, yte, [5]) == {"R@5": got["R@5"]}


def _blobs(rng: np.random.Generator, n: int, classes: int, dim: int, separable: bool):
    labels = rng.integers(0, classes, n)
    if not separable:
        return rng.normal(size=(n, dim)).astype(np.float32), labels
    centres = np.random.default_rng(7).normal(size=(classes, dim)) * 3
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


PROBE = ProbeConfig(epochs=40, milestones=(25, 35), batch_size=128, eval_every=5)


@pytest.mark.parametrize("separable", [True, False])
def test_linear_probe_separable_high_random_chance(separable: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xtr, ytr = _blobs(rng, 600, 8, 32, separable)
    xte, yte = _blobs(rng, 600, 8, 32, separable)
    summary, probs = train_probe(xtr, ytr, xte, yte, 8, PROBE, RunDir(tmp_path, {"t": separable}), CPU)
    assert probs.shape == (600, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert summary["complete"] and summary["epochs_done"] == 40 and summary["steps"] == 40 * 5
    if separable:
        assert summary["top1"] > 0.95
    else:
        assert abs(summary["top1"] - 1 / 8) < 0.06  # chance: 12.5 %
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if "test_top1" in r] == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    if separable:  # BN without its affine part works as well here
        plain = ProbeConfig(**{**PROBE.__dict__, "bn_affine": False})
        summary, _ = train_probe(xtr, ytr, xte, yte, 8, plain, RunDir(tmp_path / "plain", {}), CPU)
        assert summary["top1"] > 0.95


def test_linear_probe_resumes_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    xtr, ytr = _blobs(rng, 300, 5, 16, True)
    xte, yte = _blobs(rng, 100, 5, 16, True)
    cfg = ProbeConfig(epochs=6, milestones=(4,), batch_size=64, eval_every=2)
    whole, probs = train_probe(xtr, ytr, xte, yte, 5, cfg, RunDir(tmp_path / "a", {}), CPU)
    stopped = ProbeConfig(**{**cfg.__dict__, "max_steps": 7})  # mid-epoch (5 batches an epoch)
    first, _ = train_probe(xtr, ytr, xte, yte, 5, stopped, RunDir(tmp_path / "b", {}), CPU)
    assert first["steps"] == 7 and not first["complete"]
    again, probs_again = train_probe(xtr, ytr, xte, yte, 5, cfg, RunDir(tmp_path / "b", {}), CPU)
    assert again == whole
    np.testing.assert_array_equal(probs, probs_again)
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k != "samples_per_s"} for x in lines]

    assert strip(a) == strip(b)
    with pytest.raises(ValueError, match="other settings"):
        train_probe(xtr, ytr, xte, yte, 5, cfg, RunDir(tmp_path / "b", {"other": 1}), CPU)


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_cli_retrieval_on_shards_then_rescore_features(action_shards, tmp_path: Path, capsys) -> None:
    out, cache = tmp_path / "ret", tmp_path / "cache"
    args = ["--task", "ucf101-retrieval", "--shards", str(action_shards["ucf101"]), "--backbone", "tiny",
            "--out", str(out), "--device", "cpu", f"features.cache_dir={cache}", *SMALL_CLIPS]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [k for k in summary if k.startswith("R@")] == ["R@1", "R@5", "R@10", "R@20", "R@50"]
    assert all(0 <= summary[f"R@{k}"] <= 1 for k in (1, 5, 10, 20, 50)) and summary["R@50"] == 1.0
    assert (summary["dataset"], summary["split"], summary["backbone"]) == ("ucf101", 1, "tiny")
    assert summary["data"] == "UCF101-layout GENERATED data: not comparable"
    printed = capsys.readouterr().out  # generated data: no published rows beside it
    assert "GENERATED data (evaluation.action_synthetic" in printed and "46.7" not in printed
    rows = read_csv(out / "neighbours.csv")
    assert len(rows) == 10 * 20  # 10 test queries x the 20 train videos (the rejected one is absent)
    assert (out / "neighbours.png").stat().st_size > 1000
    run = json.loads((out / "run.json").read_text())
    assert run["absent"] == {"train": ["v_Biking_g90_c01"], "test": []} and run["videos"] == {"train": 20, "test": 10}
    features = np.load(out / "features.npz")
    assert features["train_feats"].shape == (20, 64) and features["test_feats"].shape == (10, 64)
    # cached: a second run extracts nothing new and gives the same features
    assert len(list(cache.glob("*.npz"))) == 1
    assert main([*args[:7], str(tmp_path / "again"), *args[8:]]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "features.npz")["test_feats"], features["test_feats"])
    # the scoring mode gives the same recall from the saved features
    assert main(["--task", "ucf101-retrieval", "--features", str(out / "features.npz"),
                 "--out", str(tmp_path / "score")]) == 0
    rescored = json.loads((tmp_path / "score" / "summary.json").read_text())
    assert {k: rescored[k] for k in rescored if k.startswith("R@")} == {k: summary[k] for k in summary if k.startswith("R@")}
    assert rescored["data"] == summary["data"]


def test_table_beside_published_rows() -> None:
    from rich.console import Console

    from evaluation.action_report import data_label, result_table

    def text(table) -> str:
        console = Console(width=200, record=True)
        console.print(table)
        return console.export_text()

    real = text(result_table("ucf101", "retrieval", 2, {f"R@{k}": 0.5 for k in (1, 5, 10, 20, 50)},
                             "this run: r3d18", "ckpt.pth", data_label("ucf101", None)))
    assert "46.7" in real and "87.8" in real and "figures are for split 1" in real and "50.0" in real
    fine = text(result_table("hmdb51", "finetune", 1, {"top1": 0.3, "top5": 0.6}, "this run", "x", "HMDB51"))
    assert "51.2" in fine and "34.4" in fine and "82.0" not in fine and "30.0" in fine
    gen = text(result_table("hmdb51", "finetune", 1, {"top1": 0.3}, "this run", "x",
                            data_label("hmdb51", "made here"), generated="made here"))
    assert "51.2" not in gen and "GENERATED data (made here)" in gen and "not comparable" in gen
    given = text(result_table("ucf101", "linear", 1, {"top1": 0.3}, "this run", "–", data_label("ucf101", None, False)))
    assert "provenance unknown" in given and "no published figure" in given


def test_cli_features_mode_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_feats=np.zeros((4, 3)), train_labels=np.zeros(4, int), test_feats=np.zeros((2, 5)),
             test_labels=np.zeros(2, int))
    assert main(["--task", "hmdb51-retrieval", "--features", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.npz: train_feats D (3,) != test_feats D (5,)" in capsys.readouterr().err
    np.savez(bad, train_feats=np.zeros((4, 3)))
    assert main(["--task", "hmdb51-retrieval", "--features", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing array(s) train_labels, test_feats, test_labels" in capsys.readouterr().err
    assert main(["--task", "ucf101-finetune", "--features", str(bad)]) == 2
    assert "needs --shards" in capsys.readouterr().err


def test_cli_linear_probe_on_tcore_vit(action_shards, tmp_path: Path) -> None:
    from model.checkpoint import export_teacher
    from model.head import DINOHead
    from model.vit import vit_tiny

    torch.manual_seed(0)
    ckpt = tmp_path / "teacher.pth"
    export_teacher(vit_tiny(), DINOHead(128, out_dim=64, hidden_dim=32, bottleneck_dim=16), ckpt)
    out = tmp_path / "lin"
    assert main(["--task", "hmdb51-linear", "--shards", str(action_shards["hmdb51"]), "--ckpt", str(ckpt),
                 "--out", str(out), "--device", "cpu", "split=2", "features.cache_dir=", *SMALL_CLIPS,
                 "probe.epochs=10", "probe.milestones=[6,8]", "probe.batch_size=8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "tcore_vit" and summary["split"] == 2 and summary["complete"]
    assert 0 <= summary["top1"] <= summary["top5"] <= 1 and 0 <= summary["best_top1"] <= 1
    assert np.load(out / "features.npz")["train_feats"].shape[1] == 128
    preds = read_csv(out / "predictions.csv")
    assert len(preds) == 10 and {p["class"] for p in preds} <= {"bounce_ball", "ride_bike", "spin_bar", "spin_top",
                                                                 "watch_bunny"}
    assert (out / "metrics.jsonl").is_file() and list((out / "checkpoints").glob("ckpt_*.pth"))
