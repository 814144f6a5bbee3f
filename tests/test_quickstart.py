"""`vssl quickstart` end to end at toy size: synth -> shard -> pretrain, then re-run resumes."""

import json

from pipeline.cli import main


def test_quickstart_runs_end_to_end_and_resumes(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path), "--per-class", "2", "--finetune-steps", "2", "--steps", "2",
            "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quickstart: pretraining loss" in out and "quickstart: fine-tuned classifier" in out
    assert "8 classes, chance 0.125" in out
    assert (tmp_path / "finetune" / "eval.json").is_file()
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 16
    assert (tmp_path / "pretrain" / "loss.png").is_file()
    assert list((tmp_path / "pretrain" / "images").glob("step-*.png"))
    assert main(args[:-4] + ["--steps", "3", "--workers", "1"]) == 0  # resumes from step 2
    run = json.loads((tmp_path / "pretrain" / "run.json").read_text())
    assert run["resumed_from"] == 2
