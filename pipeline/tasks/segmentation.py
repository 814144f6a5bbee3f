"""Task kind `segmentation`: per-pixel classes of every frame from a grid head (pipeline/tasks/kinds.py).

    vssl finetune recipes/finetune/segmentation.yaml --init runs/pretrain --eval

Training: per-pixel logits (B, K, T, H, W) of every frame vs batch["masks"] (255 = ignore);
task.num_classes 0 = 2 (background + object). Evaluation: mIoU and per-class IoU over every
labelled pixel (pipeline/tasks/metrics.py); truth | prediction mask strips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ConfigError, DataConfig, FinetuneConfig, TaskConfig
from pipeline.tasks import metrics, overlays
from pipeline.tasks.heads import LinearSegHead, SegDecoder, TaskModel
from pipeline.tasks.kinds import batch_pictures, clip_frames, eval_device, fresh_batches
from pipeline.tasks.overlays import comparison_strip, draw_mask

ANNOTATIONS = ("masks",)
IGNORE_INDEX = 255  # `masks` value of pixels without a label (pipeline/data/dataset.py)
SEGMENTATION_CLASSES = 2  # background + object, when task.num_classes is 0


def build_head(cfg: FinetuneConfig, dim: int) -> nn.Module:
    task = cfg.task
    return SegDecoder(dim, task.num_classes) if task.head == "decoder" else LinearSegHead(dim, task.num_classes)


def settle(task: TaskConfig, data: DataConfig) -> TaskConfig:
    return task if task.num_classes else dataclasses.replace(task, num_classes=SEGMENTATION_CLASSES)


class SegmentationLoss(nn.Module):
    def __init__(self, model: TaskModel, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model, self.cfg, self.num_classes = model, cfg, cfg.task.num_classes

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        if "masks" not in batch:
            raise ConfigError(f"data.shards: segmentation needs samples with masks ({batch['key'][:1]} has none)")
        target = batch["masks"].to(batch["video"].device).long()
        labelled = target[target != IGNORE_INDEX]
        if labelled.numel() and int(labelled.max()) >= self.num_classes:
            raise ConfigError(f"task.num_classes: {self.num_classes}, but the masks hold id {int(labelled.max())}")
        logits = self.model(batch["video"])  # (B, K, T, H, W)
        loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
        known = target != IGNORE_INDEX
        accuracy = ((logits.argmax(dim=1) == target) & known).sum() / known.sum().clamp(min=1)
        return loss, {"pixel_accuracy": accuracy}  # read at logging steps

    @torch.no_grad()
    def visualize(self, batch: dict) -> np.ndarray:
        """Clip 0: truth masks (top) and predicted masks (bottom) over its frames."""
        frames = batch_pictures(batch["video"][:1].float(), self.cfg)[0]
        predicted = self.model(batch["video"][:1]).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        truth = batch["masks"][0].cpu().numpy()
        truth = np.where(truth == IGNORE_INDEX, 0, truth).astype(np.uint8)
        rows = [np.stack([draw_mask(f, m) for f, m in zip(frames, masks)]) for masks in (truth, predicted)]
        return np.asarray(comparison_strip(*rows))


LOSS = SegmentationLoss


@torch.no_grad()
def evaluate(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device, num_classes = eval_device(), cfg.task.num_classes
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    pictures, clips = [], 0
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split, ANNOTATIONS):
        if "masks" not in batch:
            raise ConfigError(f"data.shards: segmentation needs samples with masks ({batch['key'][0]} has none)")
        video, truth = batch["video"][keep], batch["masks"][keep].long()
        predicted = model(video.to(device)).argmax(dim=1).cpu()
        conf += metrics.confusion_matrix(predicted, truth, num_classes, ignore_index=IGNORE_INDEX)
        for i in range(len(keep)):
            if len(pictures) < cfg.task.pictures:
                shown = np.where(truth[i].numpy() == IGNORE_INDEX, 0, truth[i].numpy()).astype(np.uint8)
                pictures.append(str(overlays.save_mask_comparison(
                    out / "eval" / f"segmentation-{len(pictures)}.png", clip_frames(video[i], cfg),
                    predicted[i].to(torch.uint8).numpy(), shown)))
        clips += len(keep)
    iou = metrics.class_iou(conf).tolist()
    return {"metrics": {"mIoU": metrics.mean_iou(conf)},
            "class_iou": [None if np.isnan(v) else v for v in iou], "clips": clips, "pictures": pictures}
