"""End to end: a tiny teacher saved in the reference's {"teacher": ...} layout, loaded and run
through ``tools.eval_propagation`` on generated DAVIS / JHMDB / VIP trees; results-folder
scoring; JHMDB and VIP with a perfect feature; the CLI's error paths."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import synthetic
from evaluation.config import EvalConfig
from evaluation.datasets import read_jhmdb, read_vip
from evaluation.runner import run_jhmdb, run_vip
from model.checkpoint import export_teacher, load_teacher_backbone
from model.head import DINOHead
from model.vit import vit_tiny
from tools.eval_propagation import main

DAVIS_KEYS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    backbone, head = vit_tiny(), DINOHead(128, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    ckpt = root / "teacher.pth"
    export_teacher(backbone, head, ckpt)
    return {
        "ckpt": ckpt,
        "davis": synthetic.write_davis(root / "DAVIS", n_seq=2, T=6, hw=(64, 112)),
        "jhmdb": synthetic.write_jhmdb(root / "JHMDB", n_seq=2, T=4, hw=(96, 128), snap=4),
        "vip": synthetic.write_vip(root / "VIP_Fine", n_seq=2, T=4, hw=(64, 112)),
    }


def read_csv(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


def test_reference_layout_checkpoint_loads(data):
    obj = torch.load(data["ckpt"], map_location="cpu", weights_only=True)
    assert list(obj) == ["teacher"]
    assert {k.split(".")[0] for k in obj["teacher"]} == {"backbone", "dino_head"}
    backbone = load_teacher_backbone(data["ckpt"])
    ref = vit_tiny()
    ref.load_state_dict({k[9:]: v for k, v in obj["teacher"].items() if k.startswith("backbone.")})
    x = torch.randn(2, 3, 64, 112)
    with torch.inference_mode():
        out = backbone.get_patch_tokens(x)
        assert out.shape == (2, 4, 7, 128)
        torch.testing.assert_close(out, ref.eval().get_patch_tokens(x))


def test_cli_davis_then_rescore(data, tmp_path: Path, capsys):
    out = tmp_path / "davis"
    args = ["--ckpt", str(data["ckpt"]), "--task", "davis", "--root", str(data["davis"]),
            "--out", str(out), "--device", "cpu", "input_size=[64,112]", "overlays_per_video=2"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == DAVIS_KEYS
    assert all(0.0 <= summary[k] <= 1.0 for k in DAVIS_KEYS if "Decay" not in k)
    rows = read_csv(out / "per_object.csv")
    assert rows[0] == ["object", "J", "F"] and [r[0] for r in rows[1:]] == [
        "synth0_1", "synth0_2", "synth1_1", "synth1_2"]
    assert len(list((out / "results" / "synth1").glob("*.png"))) == 6
    assert len(list((out / "overlays" / "synth0").glob("*.png"))) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["timing"]["frames"] == 12 and run["timing"]["model_fps"] > 0
    printed = capsys.readouterr().out
    # generated data: no paper rows beside the score, and the table says so
    assert "GENERATED" in printed and "T-CoRe ViT-S/16" not in printed and "this run" in printed
    assert run["generated_data"].startswith("evaluation.synthetic")
    # the written results folder scores the same without a model
    again = tmp_path / "again"
    assert main(["--task", "davis", "--root", str(data["davis"]), "--results", str(out / "results"),
                 "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text()) == pytest.approx(summary)
    # the ground truth itself, laid out as a results folder, is perfect
    gt = tmp_path / "gt"
    assert main(["--task", "davis", "--root", str(data["davis"]),
                 "--results", str(data["davis"] / "Annotations" / "480p"), "--out", str(gt)]) == 0
    perfect = json.loads((gt / "summary.json").read_text())
    assert perfect["J&F-Mean"] == 1.0 and perfect["J-Decay"] == 0.0
    # a tree without the marker counts as real data: the paper's rows are printed beside it
    real = tmp_path / "real_layout"
    shutil.copytree(data["davis"], real)
    (real / "GENERATED.txt").unlink()
    capsys.readouterr()
    assert main(["--task", "davis", "--root", str(real), "--results", str(out / "results"),
                 "--out", str(tmp_path / "real_out")]) == 0
    printed = capsys.readouterr().out
    assert "T-CoRe ViT-S/16" in printed and "64.7" in printed and "GENERATED" not in printed


def test_cli_jhmdb_and_vip(data, tmp_path: Path):
    for task, keys, header in (("jhmdb", [f"PCK@{a}" for a in (0.1, 0.2, 0.3, 0.4, 0.5)], "sequence"),
                               ("vip", ["mIoU"], "sequence")):
        out = tmp_path / task
        assert main(["--ckpt", str(data["ckpt"]), "--task", task, "--root", str(data[task]),
                     "--out", str(out), "input_size=[64,112]"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert list(summary) == keys and all(0.0 <= v <= 1.0 for v in summary.values())
        rows = read_csv(out / "per_object.csv")
        assert rows[0] == [header, *keys] and len(rows) == 3
        assert any((out / "overlays").rglob("*.png"))


def test_jhmdb_and_vip_perfect_feature(data, tmp_path: Path):
    cfg = EvalConfig(task="jhmdb", root=str(data["jhmdb"]), input_size=(96, 128))
    fn = synthetic.colour_feature(synthetic.JOINT_RGB, stride=4)
    summary, _, rows, _ = run_jhmdb(read_jhmdb(data["jhmdb"]), fn, cfg, CPU, tmp_path / "j")
    assert summary["PCK@0.1"] > 0.95
    noise, _, _, _ = run_jhmdb(read_jhmdb(data["jhmdb"]), synthetic.random_feature(stride=4), cfg,
                               CPU, tmp_path / "jr")
    assert noise["PCK@0.1"] < summary["PCK@0.1"] - 0.3
    cfg = EvalConfig(task="vip", root=str(data["vip"]), input_size=(64, 112))
    fn = synthetic.colour_feature(synthetic.OBJECT_RGB, stride=4)
    summary, _, rows, _ = run_vip(read_vip(data["vip"]), fn, cfg, CPU, tmp_path / "v")
    assert summary["mIoU"] > 0.8 and all(np.isfinite(r[1]) for r in rows)


def test_cli_errors(data, tmp_path: Path, capsys):
    root = str(data["davis"])
    assert main(["--task", "davis", "--root", root, "--out", str(tmp_path / "a")]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert main(["--task", "jhmdb", "--root", str(data["jhmdb"]), "--results", root,
                 "--out", str(tmp_path / "b")]) == 2
    assert "only DAVIS" in capsys.readouterr().err
    partial = tmp_path / "partial"
    for seq in ("synth0", "synth1"):
        (partial / seq).mkdir(parents=True)
        for f in (data["davis"] / "Annotations" / "480p" / seq).glob("*.png"):
            (partial / seq / f.name).write_bytes(f.read_bytes())
    (partial / "synth1" / "00003.png").unlink()
    assert main(["--task", "davis", "--root", root, "--results", str(partial),
                 "--out", str(tmp_path / "c")]) == 2
    assert "synth1/00003.png" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "none.pth"), "--task", "davis", "--root", root,
                 "--out", str(tmp_path / "d")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert main(["--ckpt", str(data["ckpt"]), "--task", "davis", "--root", str(tmp_path / "nodata"),
                 "--out", str(tmp_path / "e")]) == 2
    assert "nodata" in capsys.readouterr().err
    assert main(["--task", "davis", "--root", root, "--results", str(partial), "bogus_key=1",
                 "--out", str(tmp_path / "f")]) == 2
    assert "bogus_key" in capsys.readouterr().err
