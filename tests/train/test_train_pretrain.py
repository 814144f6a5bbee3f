"""The trainer end to end, in process: the loss falls, and one non-finite step is skipped.

Killed runs, a crash mid-checkpoint, a full disk and a NaN loss that stops the run are fault
scenarios: pipeline/testing/faults/training.py, run by tests/faults/test_faults_training.py."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import losses, nan_losses, tiny_recipe, tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize("objective", ["videomae", "predictive"])
def test_loss_decreases(tmp_path, shards, objective):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", objective=objective)
    overrides = ["train.max_steps=30", "train.checkpoint_every=30", "data.batch_size=4",
                 "train.warmup_steps=3", "train.lr=3e-3"]
    cfg = load_config(PretrainConfig, recipe, overrides)
    result = train(cfg, build_objective, build_train_loader)
    trace = losses(tmp_path / "out")
    assert result.step == 30 and len(trace) == 30
    assert sum(trace[-5:]) / 5 < 0.9 * sum(trace[:5]) / 5, trace
    assert (tmp_path / "out" / "images" / "step-000030.png").is_file()
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["global_batch_clips"] == 4 and "torch" in info["versions"]
    assert info["manifest_sha256"]


def test_one_nonfinite_step_is_skipped_and_training_goes_on(tmp_path, shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out")
    result = train(load_config(PretrainConfig, recipe), nan_losses(build_objective, [4]), build_train_loader)
    assert result.step == 6
    final = ck.load_model_state(ck.latest_checkpoint(tmp_path / "out" / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in final.values())
