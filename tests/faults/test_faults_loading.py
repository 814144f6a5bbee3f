"""Damaged shards: bad samples are skipped and counted, no good one is lost, training runs to the end."""

from __future__ import annotations

from pipeline.testing.faults.loading import train_on_damaged_shards


def test_training_goes_on_over_damaged_shards_and_counts_the_skips(tmp_path, capsys):
    report = train_on_damaged_shards(tmp_path)
    assert report.ok, "\n".join(report.failures)
    assert report.samples_lost == 0 and report.counts()["faults_injected"] >= 6
    assert "bad samples skipped" in capsys.readouterr().out
