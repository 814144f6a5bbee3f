"""Experiment trackers (train.report_to): W&B in offline mode and MLflow on a local file store get
the run's parameters, scalars and pictures; a resumed run continues the same tracker runs; a
tracker that cannot start is one warning line, never a dead run."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import tiny_recipe, tiny_shards

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    return tmp_path / "mlruns"


def _mlflow_run(store, out) -> tuple:
    run_id = json.loads((out / "trackers.json").read_text())["mlflow_run_id"]
    (run,) = [p for p in store.glob(f"*/{run_id}")]
    return run_id, run


def test_wandb_and_mlflow_get_the_same_scalars_params_and_pictures(tmp_path, shards, offline):
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=4, image_every=2,
                         report_to=["tensorboard", "wandb", "mlflow"])
    train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    out = tmp_path / "out"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # MLflow: one value per step, the manifest hash and the config as parameters, the pictures
    run_id, run = _mlflow_run(offline, out)
    logged = [line.split() for line in (run / "metrics" / "train" / "loss").read_text().splitlines()]
    assert [int(step) for _, _, step in logged] == [1, 2, 3, 4]
    assert [float(v) for _, v, _ in logged] == pytest.approx(losses, rel=1e-6)
    assert (run / "params" / "data.batch_size").read_text() == "2"
    assert len((run / "params" / "manifest_sha256").read_text()) == 64
    assert len(list((run / "artifacts" / "images").glob("train_picture*.png"))) == 2
    # W&B offline: its run log (wandb-core's binary records, no Python reader) holds the scalars'
    # and parameters' names and the manifest hash; the pictures are written beside it
    (wandb_run,) = list((out / "wandb").glob("offline-run-*"))
    log = next(wandb_run.glob("run-*.wandb")).read_bytes()
    manifest = (run / "params" / "manifest_sha256").read_text()
    assert all(token in log for token in (b"train/loss", b"train/clips_per_s", b"data.batch_size", manifest.encode()))
    assert sorted(p.name.split("_")[1] for p in (wandb_run / "files" / "media" / "images" / "train").glob("*.png")) \
        == ["2", "4"]
    assert (out / "tb").is_dir()
    # resumed: the same MLflow run goes on from step 5
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=6, image_every=2,
                         report_to=["mlflow"])
    train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    again, run = _mlflow_run(offline, out)
    assert again == run_id
    steps = [int(line.split()[2]) for line in (run / "metrics" / "train" / "loss").read_text().splitlines()]
    assert steps[-2:] == [5, 6]


def test_a_tracker_that_cannot_start_is_one_warning(tmp_path, shards, offline, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=2, report_to=["mlflow"])
    result = train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    assert result.step == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "train.report_to" in line]
    assert len(lines) == 1 and lines[0].startswith("vssl: warning: train.report_to: mlflow could not start (")
    with pytest.raises(ConfigError, match=r"train.report_to\[0\]: must be one of tensorboard, wandb, mlflow"):
        load_config(PretrainConfig, None, ["train.report_to=[neptune]"])
