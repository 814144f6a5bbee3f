"""The transfer proof's script end to end on a tiny budget: data, both pretrainings, every
fine-tuning / evaluation peer, the printed table and the metric keys (guards it against bit rot;
the figures themselves come from `python -m benchmarks transfer`)."""

from __future__ import annotations

import dataclasses
import math

import benchmarks.transfer as transfer


def test_transfer_benchmark_runs_every_peer_and_reports_each_metric(monkeypatch, capsys):
    tiny = dataclasses.replace(transfer.BUDGETS["quick"], per_class=10, videomae_steps=3, predictive_steps=3,
                               classify_steps=3, segment_steps=2, finetune_batch=4, propagation_sequences=2)
    monkeypatch.setitem(transfer.BUDGETS, "quick", tiny)
    result = transfer.run(quick=True)
    metrics, goals = result["metrics"], result["goals"]
    assert set(goals) <= set(metrics)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    for init in transfer.INITS:
        assert 0.0 <= metrics[f"top1_{init}"] <= 100.0
    gap = metrics["top1_videomae"] - metrics["top1_scratch"]  # of rounded means: within 0.1 of the metric
    assert abs(metrics["videomae_minus_scratch_top1"] - gap) <= 0.1 + 1e-9
    assert metrics["classification_seeds"] == len(tiny.seeds) == 2
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("transfer: classification top-1 %")]
    assert len(rows) == 1 and rows[0].count("(") == len(transfer.INITS)  # each init: mean (seed 0, seed 1)
    assert "propagation J&F %" in out and "reference J&F of frame 0's mask" in out
