"""The transfer benchmark's script end to end on a tiny budget: data, both pretrainings, the
supervised reference, every probe and fine-tuning peer, the printed table and the metric keys
(guards it against bit rot; the figures themselves come from `python -m benchmarks transfer`)."""

from __future__ import annotations

import dataclasses
import math

import pytest

import benchmarks.transfer as transfer


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~20 short trainings and evaluations, each paying its start-up
def test_transfer_benchmark_runs_every_peer_and_reports_each_metric(monkeypatch, capsys):
    tiny = dataclasses.replace(transfer.BUDGETS["quick"], per_class=6, pretrain_steps=2, supervised_steps=2,
                               finetune_steps=2, segment_steps=2, finetune_batch=4, propagation_sequences=2,
                               workers=0, decode_timeout_s=0.0, probe_epochs=(2, 1))
    monkeypatch.setitem(transfer.BUDGETS, "quick", tiny)
    # the recipe's 4x frame enlargement costs ~5 s per sequence and encoder; the settings' path is
    # checked by the next test
    monkeypatch.setattr(transfer, "propagation_settings", lambda: {"propagation_scale": 1})
    result = transfer.run(quick=True)
    metrics, goals = result["metrics"], result["goals"]
    assert set(goals) <= set(metrics)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    for name in transfer.ENCODERS:
        for method in ("knn", "linear", "attentive"):
            assert 0.0 <= metrics[f"{method}_{name}"] <= 100.0
    gain = metrics["attentive_videomae"] - metrics["attentive_random"]  # of rounded scores
    assert abs(metrics["videomae_probe_gain"] - gain) <= 0.1 + 1e-9
    assert metrics["seeds"] == len(tiny.seeds) == 2
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("transfer:   fine-tune top-1 %")]
    assert len(rows) == 1 and rows[0].count("(") == len(transfer.INITS)  # each init: mean +- spread (seeds)
    assert "propagation J&F %" in out and "supervised reference" in out


def test_propagation_is_evaluated_with_the_shipped_recipes_settings(tmp_path):
    """The J&F row evaluates as `vssl eval recipes/finetune/propagation.yaml` does: at scale 1 the
    64 px test-bed frames give an 8x8 token grid and J&F near zero for any encoder."""
    cfg = transfer.task_config(tmp_path, tmp_path / "shards", tmp_path / "davis", "propagation", None, 0,
                               transfer.BUDGETS["quick"], 0, 1.0, "scratch")
    recipe = transfer.read_yaml(transfer.recipe_path("finetune/propagation.yaml"))["task"]
    assert cfg.task.propagation_scale == recipe["propagation_scale"] > 1
    assert cfg.task.propagation_radius == recipe["propagation_radius"]
    assert cfg.task.davis_split == "bench"
