"""Task kind `classification`: clip labels from a linear or attentive head (pipeline/tasks/kinds.py).

    vssl finetune recipes/finetune/classification.yaml --init runs/pretrain --eval

Training: clip logits of the labelled samples (label -1 = unlabelled, skipped), clip-consistent
mixup/cutmix + label smoothing (pipeline/tasks/mixing.py); full fine-tuning with layer-wise lr
decay (task.layer_decay), drop path (model.overrides.drop_path_rate), or a linear / attentive
probe over a frozen encoder (task.freeze_encoder). task.num_classes 0 = the manifest's classes.
Evaluation: softmax averaged over every view of a video; top-1 / top-5, mean and per-class
accuracy; a confusion-matrix picture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import ConfigError, DataConfig, FinetuneConfig, TaskConfig
from pipeline.tasks import metrics, overlays
from pipeline.tasks.heads import AttentiveProbe, LinearHead, TaskModel
from pipeline.tasks.kinds import eval_device, fresh_batches, zero_loss
from pipeline.tasks.label_subset import source_classes
from pipeline.tasks.mixing import ClipMixer, soft_cross_entropy

ANNOTATIONS = ()


def build_head(cfg: FinetuneConfig, dim: int) -> nn.Module:
    task = cfg.task
    if task.head == "attentive":
        return AttentiveProbe(dim, task.num_classes)
    return LinearHead(dim, task.num_classes, norm=task.head_norm, dropout=task.head_dropout)


def settle(task: TaskConfig, data: DataConfig) -> TaskConfig:
    if task.num_classes:
        return task
    classes = source_classes(data.shards, data.manifest)
    if not classes:
        raise ConfigError(f"task.num_classes: {data.shards!r} has no manifest listing classes; set it")
    return dataclasses.replace(task, num_classes=len(classes))


class ClassificationLoss(nn.Module):
    def __init__(self, model: TaskModel, cfg: FinetuneConfig) -> None:
        super().__init__()
        task = cfg.task
        self.model, self.num_classes = model, task.num_classes
        self.mixer = ClipMixer(task.num_classes, task.mixup_alpha, task.cutmix_alpha, task.mix_prob,
                               task.mix_switch_prob, task.label_smoothing)

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        video, labels = batch["video"], batch["label"].to(batch["video"].device)
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ConfigError(f"task.num_classes: {self.num_classes}, but sample "
                              f"{batch['key'][int(labels.argmax())]} has label {int(labels.max())}")
        keep = labels >= 0  # unlabelled samples carry -1
        if not keep.any():
            return zero_loss(self.model), {}
        video, labels = video[keep], labels[keep]
        mixed, targets = self.mixer(video, labels)
        logits = self.model(mixed)
        loss = soft_cross_entropy(logits, targets)
        return loss, {"train_top1": (logits.argmax(dim=1) == labels).float().mean()}  # read at logging steps


LOSS = ClassificationLoss


@torch.no_grad()
def evaluate(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device = eval_device()
    scores, keys, labels = [], [], {}
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split):
        scores.append(model(batch["video"][keep].to(device)).float().cpu())
        keys += [batch["key"][i] for i in keep]
        labels.update({batch["key"][i]: int(batch["label"][i]) for i in keep})
    videos, probs = metrics.aggregate_views(torch.cat(scores), keys)
    target = torch.tensor([labels[k] for k in videos])
    labelled = target >= 0
    probs, target = probs[labelled], target[labelled]
    num_classes = probs.shape[1]
    conf = metrics.confusion_matrix(probs.argmax(dim=1), target, num_classes)
    names = source_classes(cfg.data.shards, cfg.data.manifest) or [str(i) for i in range(num_classes)]
    names = names if len(names) == num_classes else [str(i) for i in range(num_classes)]
    picture = overlays.save_confusion_matrix(out / "eval" / "confusion.png", conf, names)
    per_class = metrics.per_class_accuracy(conf).tolist()
    return {"metrics": {**metrics.topk_accuracy(probs, target, (1, 5)),
                        "mean_class_accuracy": metrics.mean_class_accuracy(conf)},
            "per_class_accuracy": {n: (None if np.isnan(a) else a) for n, a in zip(names, per_class)},
            "videos": len(target), "views_per_video": cfg.data.eval_clips * cfg.data.eval_crops,
            "confusion": conf.tolist(), "pictures": [str(picture)]}
