"""Representation monitors during pretraining: the health figures on hand-made features, k-NN and
health in the run's metrics, a collapse made on purpose and warned about, and training that the
monitors leave untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.probe.health import COLLAPSE_PATIENCE, feature_health, rankme
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import losses, tiny_recipe, tiny_shards


def test_health_figures_on_features_with_known_answers():
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(4000, 16, generator=gen)
    healthy = feature_health(spread)
    assert healthy["feature_std"] == pytest.approx(1.0, abs=0.05)
    assert healthy["rankme"] > 15 and healthy["dead_channels"] == 0.0
    constant = feature_health(torch.ones(100, 16) + 1e-9 * torch.randn(100, 16, generator=gen))
    assert constant["feature_std"] < 1e-6 and constant["rankme"] == pytest.approx(1.0, abs=1e-3)
    one_dead = spread.clone()
    one_dead[:, 3] = 0.5
    assert feature_health(one_dead)["dead_channels"] == pytest.approx(1 / 16)
    two_directions = torch.zeros(10, 4)
    two_directions[:5, 0], two_directions[5:, 1] = 1.0, 1.0  # singular values equal: 2 directions
    assert rankme(two_directions) == pytest.approx(2.0, rel=1e-4)
    assert math.isclose(rankme(torch.eye(8)), 8.0, rel_tol=1e-4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))  # labelled, 5 classes, train split only


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_online_evaluation_is_logged_and_leaves_training_untouched(tmp_path, shards):
    plain = tiny_recipe(tmp_path / "a.yaml", shards, tmp_path / "plain", max_steps=6)
    train(load_config(PretrainConfig, plain, []), build_objective, build_train_loader)
    watched = tiny_recipe(tmp_path / "b.yaml", shards, tmp_path / "watched", max_steps=6, eval_every=2,
                          eval_videos=16)
    train(load_config(PretrainConfig, watched, []), build_objective, build_train_loader)
    assert losses(tmp_path / "watched") == losses(tmp_path / "plain")
    records = _records(tmp_path / "watched")
    evaluated = [r["step"] for r in records if "knn_top1" in r]
    assert evaluated == [2, 4, 6]  # no val split in these shards: training videos, labelled
    for r in records:
        if "knn_top1" in r:
            assert 0.0 <= r["knn_top1"] <= 1.0 and r["rankme"] >= 1.0 and 0.0 <= r["dead_channels"] <= 1.0
    assert (tmp_path / "watched" / "tb").is_dir()


def test_a_collapsed_encoder_is_warned_about_in_one_line(tmp_path, shards, capsys):
    """An encoder whose final LayerNorm has zero, frozen gain outputs its bias for every clip:
    collapsed by construction. After COLLAPSE_PATIENCE evaluations in a row, one warning line."""

    def collapsing(cfg):
        objective = build_objective(cfg)
        objective.encoder.norm.weight.data.zero_()
        objective.encoder.norm.weight.requires_grad_(False)
        return objective

    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=2 * COLLAPSE_PATIENCE,
                         eval_every=2, eval_videos=16)
    train(load_config(PretrainConfig, recipe, []), collapsing, build_train_loader)
    lines = [line for line in capsys.readouterr().err.splitlines() if "representation collapse" in line]
    assert len(lines) == 1 and lines[0].startswith(f"vssl: warning: step {2 * COLLAPSE_PATIENCE}: ")
    assert "feature_std 0.000" in lines[0] and "rankme" in lines[0]
    record = _records(tmp_path / "out")[-1]
    assert record["feature_std"] < 1e-3
