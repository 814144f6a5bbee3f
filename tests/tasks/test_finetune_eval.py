"""`vssl eval` on hand-checkable cases: multi-view aggregation, wrap-around padding, mIoU, J&F.

    python -m pytest -q tests/tasks/test_finetune_eval.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.cli import main
from pipeline.config import FinetuneConfig, from_dict
from pipeline.models import create_model
from pipeline.models.checkpoint import save_backbone
from pipeline.tasks import classification, davis, segmentation
from tests.tasks.finetune_testlib import TINY_MODEL, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


class ScoresFromVideo(nn.Module):
    """A stand-in task model whose scores are written into the clip: video[:, 0, :, 0, 0] are
    class logits, or video[:, :K] per-pixel logits (segment=True)."""

    def __init__(self, segment: bool = False) -> None:
        super().__init__()
        self.segment = segment
        self.encoder = create_model("vit_tiny_joint", embed_dim=32, depth=1, num_heads=2, patch_size=(1, 1, 1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video[:, :2] if self.segment else video[:, 0, :, 0, 0]


def fake_loader(monkeypatch, batches: list[dict]) -> None:
    monkeypatch.setattr("pipeline.data.loader.build_loader", lambda *args, **kwargs: iter(batches))


def config(out, kind="classification", **task) -> FinetuneConfig:
    return from_dict(FinetuneConfig, {"data": {"shards": str(out / "none"), "eval_clips": 2},
                                      "task": {"kind": kind, **task}, "train": {"output_dir": str(out)}})


def class_batch(keys: list[str], labels: list[int], logits: list[list[float]]) -> dict:
    video = torch.tensor(logits)[:, None, :, None, None]  # (views, 1, classes, 1, 1)
    return {"video": video, "key": keys, "label": torch.tensor(labels)}


def test_classification_averages_views_counts_each_video_once_and_draws_the_confusion(tmp_path, monkeypatch):
    fake_loader(monkeypatch, [  # the loader pads the last batches by wrapping around: a video
        #                           seen before (in this batch or an earlier one) must not count again
        class_batch(["a", "a", "b", "b", "a", "a"], [0, 0, 1, 1, 0, 0],
                    [[2, 0, 0], [0, 1, 0], [0, 0, 3], [0, 0, 3], [0, 9, 0], [0, 9, 0]]),
        class_batch(["c", "c", "a", "a"], [2, 2, 0, 0], [[0, 0, 1], [0, 0, 1], [0, 9, 0], [0, 9, 0]]),
        class_batch(["b", "b", "c", "c", "b", "b"], [1, 1, 2, 2, 1, 1],
                    [[0, 9, 0], [0, 9, 0], [9, 0, 0], [9, 0, 0], [0, 9, 0], [0, 9, 0]]),
    ])
    report = classification.evaluate(ScoresFromVideo(), config(tmp_path), tmp_path)
    # a: mean softmax of [2,0,0] and [0,1,0] = (0.50, 0.34, 0.16) -> 0 (right); b -> 2 (wrong); c -> 2 (right)
    assert report["metrics"]["top1"] == pytest.approx(2 / 3)
    assert report["metrics"]["top5"] == 1.0  # k is capped at the 3 classes
    assert report["metrics"]["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert report["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert report["per_class_accuracy"] == {"0": 1.0, "1": 0.0, "2": 1.0} and report["videos"] == 3
    assert Image.open(report["pictures"][0]).size[0] > 100


def test_segmentation_miou_skips_ignored_pixels(tmp_path, monkeypatch):
    truth = torch.tensor([[[0, 1], [1, 255]]], dtype=torch.uint8)  # (T=1, 2, 2); 255 = no label
    logits = torch.zeros(1, 3, 1, 2, 2)
    logits[0, 1, 0] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # predicts [[0, 1], [0, 1]]
    fake_loader(monkeypatch, [{"video": logits, "key": ["s"], "label": torch.tensor([0]), "masks": truth[None]}])
    report = segmentation.evaluate(ScoresFromVideo(segment=True), config(tmp_path, "segmentation", num_classes=2),
                                   tmp_path)
    # pixels (truth, prediction): (0, 0), (1, 1), (1, 0): IoU0 = 1 / 2, IoU1 = 1 / 2
    assert report["class_iou"] == [0.5, 0.5] and report["metrics"]["mIoU"] == 0.5
    assert len(report["pictures"]) == 1


def write_static_davis(root, names=("seqa", "seqb"), frames=5, size=32) -> None:
    """Sequences whose frames never change, with a grid-aligned square object."""
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((frames, size, size), np.uint8)
        mask[:, 8:24, 8:16] = 1
        folder = root / davis.FRAME_DIR / "480p" / name
        folder.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(image).save(folder / f"{t:05d}.jpg", quality=95)
        davis.write_masks(root, name, mask)
    (root / davis.SETS_DIR / "2017").mkdir(parents=True)
    (root / davis.SETS_DIR / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in names))


def test_propagation_eval_from_cli_for_an_encoder_checkpoint_and_the_untrained_baseline(tmp_path, capsys):
    write_static_davis(tmp_path / "davis")
    model = {**TINY_MODEL, "overrides": {**TINY_MODEL["overrides"], "num_frames": 8, "img_size": 32}}
    recipe = write_recipe(tmp_path / "prop.yaml", {
        "model": model, "task": {"kind": "propagation", "davis_root": str(tmp_path / "davis"), "pictures": 1,
                                 "propagation_radius": 1}, "train": {"output_dir": str(tmp_path / "baseline")}})
    assert main(["eval", str(recipe)]) == 0
    baseline = json.loads((tmp_path / "baseline" / "eval.json").read_text())
    assert baseline["model"] == "recipe model" and set(baseline["sequences"]) == {"seqa", "seqb"}
    assert set(baseline["metrics"]) == {"J", "F", "J&F", "objects"} and baseline["metrics"]["objects"] == 2
    assert baseline["metrics"]["J&F"] > 0.7  # frames that never change: the first mask carries over
    assert len(baseline["pictures"]) == 1 and "J&F" in capsys.readouterr().out
    torch.manual_seed(0)
    save_backbone(create_model("vit_tiny_joint", num_frames=8, img_size=32, **TINY_MODEL["overrides"]),
                  tmp_path / "backbone")
    assert main(["eval", str(recipe), "--checkpoint", str(tmp_path / "backbone"), "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["model"] == "encoder checkpoint"
    assert main(["eval", str(recipe), "--set", "task.propagation_scale=2", "--out", str(tmp_path / "x2")]) == 0
    enlarged = json.loads((tmp_path / "x2" / "eval.json").read_text())["metrics"]
    assert enlarged["J&F"] > 0.7 and enlarged["objects"] == 2  # scored at the original size
    assert main(["eval", str(recipe), "--set", f"task.davis_root={tmp_path / 'nothing'}"]) == 2
    assert "task.davis_root: DAVIS split 'val'" in capsys.readouterr().err
