"""`vssl quickstart` end to end at toy size: synth -> shard -> pretrain -> frozen k-NN of the
pretrained and a random-init encoder, then a re-run resumes (and reuses the probe features)."""

import json

from pipeline.cli import main


def test_quickstart_runs_end_to_end_and_resumes(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path), "--per-class", "2", "--steps", "2", "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quickstart: pretraining loss" in out
    lines = [line for line in out.splitlines() if line.startswith("quickstart: frozen k-NN")]
    assert len(lines) == 2 and "pretrained" in lines[0] and "random init" in lines[0] and "chance 0.125" in lines[0]
    for name in ("pretrained", "random"):
        report = json.loads((tmp_path / "probe" / name / "probe.json").read_text())
        assert set(report["knn"]) == {"k10", "k20"}
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 16
    assert (tmp_path / "pretrain" / "loss.png").is_file()
    assert list((tmp_path / "pretrain" / "images").glob("step-*.png"))
    assert main(["quickstart", "--out", str(tmp_path), "--per-class", "2", "--steps", "3", "--workers", "1"]) == 0
    run = json.loads((tmp_path / "pretrain" / "run.json").read_text())
    assert run["resumed_from"] == 2
    random_probe = json.loads((tmp_path / "probe" / "random" / "probe.json").read_text())
    assert random_probe["features_cached"] == {"train": True, "eval": True}  # the same random encoder
