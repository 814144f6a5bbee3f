"""`vssl shard` over a corpus of broken inputs: good in, liars repaired, bad quarantined, nothing lost."""

from __future__ import annotations

from pipeline.testing.faults.prep import shard_corpus


def test_one_shard_run_over_every_kind_of_broken_input(tmp_path):
    report = shard_corpus(tmp_path)
    assert report.ok, "\n".join(report.failures)
    assert report.counts()["faults_injected"] >= 20 and report.samples_lost == 0 and report.hangs == 0
