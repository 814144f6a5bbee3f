"""Every head through `vssl finetune` and `vssl eval`: tiny models, a few steps, real tiny shards.

    python -m pytest -q tests/tasks/test_finetune_tasks.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.tasks.evaluate import evaluate
from pipeline.tasks.finetune import finetune, make_task_loss, make_optimizer, prepare, build_task_model
from pipeline.train import checkpoint as ck
from tests.tasks.finetune_testlib import tiny_config, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "full_finetune": ("classification", "linear",
                      {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "layer_decay": 0.75},
                      {"repeated_samples": 2, "rand_augment_ops": 1, "eval_clips": 2}, {"drop_path_rate": 0.1},
                      {"top1", "top5", "mean_class_accuracy"}),
    "linear_probe": ("classification", "linear", {"freeze_encoder": True}, {}, {},
                     {"top1", "top5", "mean_class_accuracy"}),
    "attentive_probe": ("classification", "attentive", {"freeze_encoder": True}, {"eval_crops": 2}, {},
                        {"top1", "top5", "mean_class_accuracy"}),
    "segmentation_linear": ("segmentation", "linear", {}, {}, {}, {"mIoU"}),
    "segmentation_decoder": ("segmentation", "decoder", {}, {}, {}, {"mIoU"}),
    "tracking": ("tracking", "correlation", {"freeze_encoder": True}, {}, {}, {"success_auc", "precision_20px"}),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def encoder_state(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ck.load_model_state(folder).items() if k.startswith("model.encoder.")}


@pytest.mark.parametrize("case", list(CASES))
def test_each_head_finetunes_then_evaluates(tmp_path, shards, case):
    kind, head, task, data, overrides, metric_keys = CASES[case]
    out = tmp_path / "run"
    cfg = tiny_config(shards, out, kind, head, task=task, data=data,
                      model={"overrides": {**tiny_config(shards, out).model.overrides, **overrides}})
    result = finetune(cfg)
    assert result.step == 4 and math.isfinite(result.last_loss)
    first, last = ck.complete_checkpoints(out / "checkpoints")[-2:]
    before, after = encoder_state(first), encoder_state(last)
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed != cfg.task.freeze_encoder  # a probe never moves the encoder; fine-tuning does
    recorded = json.loads((last / "metadata.json").read_text())["config"]
    assert recorded["model"]["overrides"]["embed_dim"] == 32 and recorded["task"]["head"] == head
    if kind != "classification":
        assert (out / "images" / "step-000004.png").is_file()

    report = evaluate(cfg, out)
    assert set(report["metrics"]) == metric_keys
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert json.loads((out / "eval.json").read_text())["metrics"] == report["metrics"]
    assert report["pictures"] and all(Path(p).is_file() for p in report["pictures"])
    if kind == "classification":
        assert report["videos"] == 4  # the val split's 4 videos, each once, whatever the padding
        assert report["views_per_video"] == cfg.data.eval_clips * cfg.data.eval_crops
        assert set(report["per_class_accuracy"]) == {f"c{i}" for i in range(5)}


def test_layer_decay_reaches_the_optimizer_and_probes_train_only_the_head(tmp_path, shards):
    cfg = tiny_config(shards, tmp_path, task={"layer_decay": 0.5})
    recorded, encoder = prepare(cfg)
    assert recorded.task.num_classes == 5  # from the manifest's classes
    optimizer = make_optimizer(make_task_loss(recorded, build_task_model(recorded, encoder)), recorded)
    scales = {g["layer_id"]: g["lr_scale"] for g in optimizer.param_groups}
    assert scales == {i: 0.5 ** (3 - i) for i in range(4)}  # 2 blocks: layers 0..3, head = 3
    probe = tiny_config(shards, tmp_path, task={"freeze_encoder": True})
    recorded, encoder = prepare(probe)
    optimizer = make_optimizer(make_task_loss(recorded, build_task_model(recorded, encoder)), recorded)
    names = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert names and all(n.startswith("head.") for n in names)


def test_segmentation_learns_the_moving_square(tmp_path, shards):
    cfg = tiny_config(shards, tmp_path / "run", "segmentation", "linear",
                      train={"max_steps": 30, "lr": 3e-3, "warmup_steps": 3, "checkpoint_every": 30,
                             "image_every": 30})
    finetune(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert evaluate(cfg, tmp_path / "run")["metrics"]["mIoU"] > 0.6
