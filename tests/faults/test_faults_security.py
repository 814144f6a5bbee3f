"""Untrusted shards, manifests, checkpoints, recipes and names never run code or write outside OUT."""

from __future__ import annotations

from pipeline.train import checkpoint as ck
from pipeline.testing.faults.security import hostile_files, hostile_shards, shell_strings_in_source
from pipeline.testing.tiny_train import ROOT


def test_hostile_shards_through_loader_reshard_and_inspect(tmp_path):
    report = hostile_shards(tmp_path)
    assert report.ok, "\n".join(report.failures)
    assert report.counts()["faults_injected"] >= 8


def test_hostile_checkpoint_weights_recipe_and_davis_names(tmp_path, train_setup):
    checkpoint = ck.latest_checkpoint(train_setup.tmp / "ref" / "checkpoints")
    report = hostile_files(tmp_path, checkpoint, train_setup.recipe)
    assert report.ok, "\n".join(report.failures)


def test_no_code_builds_a_shell_command():
    # file names reach subprocesses only as argv items (see pipeline/testing/faults/prep.py for names like "$(touch x).mp4")
    assert shell_strings_in_source(ROOT) == []
