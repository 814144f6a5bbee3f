"""The trainer end to end: learning, exact resume after SIGKILL, crash mid-checkpoint, NaN guard."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import TrainingError, train
from pipeline.testing.tiny_train import ROOT, env, losses, nan_losses, pretrain_cmd, run, tiny_recipe, tiny_shards


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


def test_sigkill_then_resume_gives_the_same_losses(tmp_path, shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "unused")
    ref = tmp_path / "ref"
    done = run(pretrain_cmd(recipe, f"train.output_dir={ref}", "train.max_steps=8"))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cmd(recipe, f"train.output_dir={killed}", "train.max_steps=8"),
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.latest_checkpoint(killed / "checkpoints") is not None
    resumed = run(pretrain_cmd(recipe, f"train.output_dir={killed}", "train.max_steps=8"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(killed) == losses(ref)  # bit-identical on CPU
    assert json.loads((killed / "run.json").read_text())["resumed_from"] >= 2


def test_crash_during_checkpoint_write_falls_back(tmp_path, shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "unused")
    ref = tmp_path / "ref"
    assert run(pretrain_cmd(recipe, f"train.output_dir={ref}")).returncode == 0
    out = tmp_path / "crash"
    crashed = run(pretrain_cmd(recipe, f"train.output_dir={out}"), VSSL_FAULT_CRASH_IN_SAVE="4")
    assert crashed.returncode != 0
    assert (out / "checkpoints" / "step-000004.tmp").is_dir()  # the half-written folder
    assert ck.latest_checkpoint(out / "checkpoints").name == "step-000002"
    resumed = run(pretrain_cmd(recipe, f"train.output_dir={out}"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(out) == losses(ref)
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_nonfinite_loss_stops_before_a_poisoned_checkpoint(tmp_path, shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out")
    cfg = load_config(PretrainConfig, recipe, ["train.max_nonfinite_retries=2"])
    with pytest.raises(TrainingError, match=r"step 3: loss or gradient non-finite 3 times"):
        train(cfg, nan_losses(build_objective, [4, 5, 6]), build_train_loader)
    folder = ck.latest_checkpoint(tmp_path / "out" / "checkpoints")
    assert folder.name == "step-000002"
    assert all(torch.isfinite(v).all() for v in ck.load_model_state(folder).values())


def test_one_nonfinite_step_is_skipped_and_training_goes_on(tmp_path, shards):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out")
    result = train(load_config(PretrainConfig, recipe), nan_losses(build_objective, [4]), build_train_loader)
    assert result.step == 6
    final = ck.load_model_state(ck.latest_checkpoint(tmp_path / "out" / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in final.values())
