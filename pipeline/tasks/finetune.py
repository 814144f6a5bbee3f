"""Fine-tuning = the pretraining trainer with a task loss module: TaskModel + the task's loss.

    vssl finetune recipes/finetune/classification.yaml --init runs/pretrain
    from pipeline.tasks.finetune import finetune
    result = finetune(load_config(FinetuneConfig, "recipes/finetune/segmentation.yaml", overrides))

`prepare(cfg)` settles everything a run depends on before training starts, and writes it into
the config the trainer records (run.json, every checkpoint's metadata.json):
- the encoder: pipeline/models/build.py's build_encoder, from `model.pretrained` (what --init
  sets; any checkpoint kind load_encoder reads) or model.name from scratch; model.name/overrides
  become its full constructor config (recorded_model), so `vssl eval` rebuilds the exact
  architecture from the checkpoint alone;
- task.num_classes: the manifest's class count (classification), 2 (segmentation);
- task.label_fraction < 1: data.shards becomes the labelled subset (pipeline/tasks/label_subset.py).

Task losses (forward(batch) -> (loss, logs), as pipeline/train/trainer.py wants):
    classification  clip logits; clip-consistent mixup/cutmix + label smoothing
                    (pipeline/tasks/mixing.py); full fine-tuning with layer-wise lr decay
                    (task.layer_decay), drop path (model.overrides.drop_path_rate), or a linear /
                    attentive probe over a frozen encoder (task.freeze_encoder)
    segmentation    per-pixel logits of every frame vs batch["masks"] (255 = ignore)
    tracking        (template, search) pairs from batch["boxes"] (pipeline/tasks/track_pairs.py),
                    tracking_loss of pipeline/tasks/tracking.py
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ConfigError, FinetuneConfig
from pipeline.models.base import VideoBackbone
from pipeline.models.build import build_encoder, recorded_model
from pipeline.objectives.common import to_uint8_frames
from pipeline.tasks.heads import AttentiveProbe, LinearHead, LinearSegHead, SegDecoder, TaskModel
from pipeline.tasks.label_subset import source_classes, write_label_subset
from pipeline.tasks.layer_decay import build_finetune_optimizer
from pipeline.tasks.mixing import ClipMixer, soft_cross_entropy
from pipeline.tasks.overlays import PREDICTION_COLOUR, TRUTH_COLOUR, comparison_strip, draw_box, draw_mask
from pipeline.tasks.track_pairs import FramePairs, random_pairs
from pipeline.tasks.tracking import TrackingHead, decode_boxes, tracking_loss

IGNORE_INDEX = 255  # `masks` value of pixels without a label (pipeline/data/dataset.py)
SEGMENTATION_CLASSES = 2  # background + object, when task.num_classes is 0
# the per-frame annotations each task's training and evaluation read; the loader decodes no others
TASK_ANNOTATIONS = {"classification": (), "segmentation": ("masks",), "tracking": ("boxes",), "propagation": ()}


def build_head(cfg: FinetuneConfig, dim: int) -> nn.Module:
    task = cfg.task
    if task.kind == "classification":
        if task.head == "attentive":
            return AttentiveProbe(dim, task.num_classes)
        return LinearHead(dim, task.num_classes, norm=task.head_norm, dropout=task.head_dropout)
    if task.kind == "segmentation":
        return SegDecoder(dim, task.num_classes) if task.head == "decoder" else LinearSegHead(dim, task.num_classes)
    if task.kind == "tracking":
        return TrackingHead(dim, width=task.head_width)
    raise ConfigError(f"task.kind: {task.kind} has no trained head (run `vssl eval` on an encoder checkpoint)")


def build_task_model(cfg: FinetuneConfig, encoder: VideoBackbone) -> TaskModel:
    return TaskModel(encoder, build_head(cfg, encoder.num_features), freeze_encoder=cfg.task.freeze_encoder)


def _zero_loss(module: nn.Module) -> Tensor:
    """A zero loss tied to every trainable parameter (a batch with nothing to learn from)."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def _batch_pictures(video: Tensor, cfg: FinetuneConfig) -> np.ndarray:
    """(B, C, T, H, W) normalised -> (B, T, H, W, 3) uint8."""
    return np.stack([to_uint8_frames(clip, cfg.data.mean, cfg.data.std) for clip in video])


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
            return _zero_loss(self.model), {}
        video, labels = video[keep], labels[keep]
        mixed, targets = self.mixer(video, labels)
        logits = self.model(mixed)
        loss = soft_cross_entropy(logits, targets)
        return loss, {"train_top1": (logits.argmax(dim=1) == labels).float().mean()}  # read at logging steps


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
        frames = _batch_pictures(batch["video"][:1].float(), self.cfg)[0]
        predicted = self.model(batch["video"][:1]).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        truth = batch["masks"][0].cpu().numpy()
        truth = np.where(truth == IGNORE_INDEX, 0, truth).astype(np.uint8)
        rows = [np.stack([draw_mask(f, m) for f, m in zip(frames, masks)]) for masks in (truth, predicted)]
        return np.asarray(comparison_strip(*rows))


class TrackingLoss(nn.Module):
    def __init__(self, model: TaskModel, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def pairs(self, batch: dict) -> FramePairs:
        if "boxes" not in batch:
            raise ConfigError(f"data.shards: tracking needs samples with boxes ({batch['key'][:1]} has none)")
        boxes = batch["boxes"].to(batch["video"].device)
        return random_pairs(batch["video"], boxes, self.cfg.task.template_size, self.cfg.task.template_context)

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        pairs = self.pairs(batch)
        if not len(pairs.boxes):  # no clip with two known boxes: a zero loss that still has a graph
            return _zero_loss(self.model), {"pairs": 0.0}
        out = self.model(pairs.template, pairs.search)
        loss, logs = tracking_loss(out, pairs.boxes, tuple(pairs.search.shape[-2:]))
        return loss, {**logs, "pairs": float(len(pairs.boxes))}

    @torch.no_grad()
    def visualize(self, batch: dict) -> np.ndarray:
        """Up to 8 search frames: truth box (top) and predicted box (bottom)."""
        pairs = self.pairs(batch)
        if not len(pairs.boxes):
            return _batch_pictures(batch["video"][:1].float(), self.cfg)[0, 0]
        pairs = FramePairs(*(x[:8] for x in pairs))
        predicted = decode_boxes(self.model(pairs.template, pairs.search), tuple(pairs.search.shape[-2:]))
        frames = _batch_pictures(pairs.search[:, :, None].float(), self.cfg)[:, 0]
        truth = np.stack([draw_box(f, b, TRUTH_COLOUR) for f, b in zip(frames, pairs.boxes.cpu().numpy())])
        guess = np.stack([draw_box(f, b, PREDICTION_COLOUR) for f, b in zip(frames, predicted.cpu().numpy())])
        return np.asarray(comparison_strip(truth, guess))


TASK_LOSSES = {"classification": ClassificationLoss, "segmentation": SegmentationLoss, "tracking": TrackingLoss}


def make_task_loss(cfg: FinetuneConfig, model: TaskModel) -> nn.Module:
    """The module the trainer trains for this task: forward(batch) -> (loss, logs), TaskModel as `model`."""
    return TASK_LOSSES[cfg.task.kind](model, cfg)


def make_optimizer(task_loss: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay over the task model's trainable parameters."""
    tc = cfg.train
    return build_finetune_optimizer(task_loss.model, tc.lr, tc.weight_decay, cfg.task.layer_decay, tuple(tc.betas))


def prepare(cfg: FinetuneConfig) -> tuple[FinetuneConfig, VideoBackbone]:
    """(the config to record, the encoder): see the module docstring."""
    encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size)
    model = recorded_model(cfg.model, encoder)
    task, data = cfg.task, cfg.data
    if task.kind == "classification" and not task.num_classes:
        classes = source_classes(data.shards, data.manifest)
        if not classes:
            raise ConfigError(f"task.num_classes: {data.shards!r} has no manifest listing classes; set it")
        task = dataclasses.replace(task, num_classes=len(classes))
    if task.kind == "segmentation" and not task.num_classes:
        task = dataclasses.replace(task, num_classes=SEGMENTATION_CLASSES)
    if task.label_fraction < 1.0:
        if data.sources:
            raise ConfigError("task.label_fraction: works on data.shards, not a data.sources mix")
        folder = Path(cfg.train.output_dir) / f"labelled-{task.label_fraction:g}-seed{task.label_seed}"
        subset = write_label_subset(data.shards, data.manifest, folder, task.label_fraction, task.label_seed)
        data = dataclasses.replace(data, shards=str(subset), manifest="")
    return dataclasses.replace(cfg, model=model, task=task, data=data), encoder


def finetune(cfg: FinetuneConfig):
    """Prepare, then train with pipeline/train/trainer.py; returns its TrainResult."""
    from pipeline.train.build import build_train_loader
    from pipeline.train.trainer import train

    if cfg.task.kind == "propagation":
        raise ConfigError("task.kind: propagation trains nothing; run `vssl eval RECIPE --checkpoint ENCODER`")
    if not cfg.data.shards and not cfg.data.sources:
        raise ConfigError("data.shards: no shards given (set it in the recipe or with --set data.shards=PATH)")
    torch.manual_seed(cfg.train.seed)  # a fresh encoder's and the head's init
    recorded, encoder = prepare(cfg)
    task_loss = make_task_loss(recorded, build_task_model(recorded, encoder))
    loader = functools.partial(build_train_loader, annotations=TASK_ANNOTATIONS[cfg.task.kind])
    return train(recorded, lambda _: task_loss, loader, make_optimizer=make_optimizer)
