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
- the task fields its data decides (the kind's settle): task.num_classes from the manifest
  (classification), 2 (segmentation);
- task.label_fraction < 1: data.shards becomes the labelled subset (pipeline/tasks/label_subset.py).

The task itself - head, loss, the per-frame annotations it reads, the task fields its data
decides - comes from its module, pipeline/tasks/<task.kind>.py (pipeline/tasks/kinds.py says what
each offers). Every task loss has forward(batch) -> (loss, logs), as pipeline/train/trainer.py
wants, and holds the TaskModel as `model`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from pipeline.config import ConfigError, FinetuneConfig
from pipeline.models.base import VideoBackbone
from pipeline.models.build import build_encoder, recorded_model
from pipeline.tasks.heads import TaskModel
from pipeline.tasks.kinds import kind_module, trains
from pipeline.tasks.label_subset import write_label_subset
from pipeline.tasks.layer_decay import build_finetune_optimizer


def build_head(cfg: FinetuneConfig, dim: int) -> nn.Module:
    if not trains(cfg.task.kind):
        raise ConfigError(f"task.kind: {cfg.task.kind} has no trained head (run `vssl eval` on an encoder checkpoint)")
    return kind_module(cfg.task.kind).build_head(cfg, dim)


def build_task_model(cfg: FinetuneConfig, encoder: VideoBackbone) -> TaskModel:
    return TaskModel(encoder, build_head(cfg, encoder.num_features), freeze_encoder=cfg.task.freeze_encoder)


def make_task_loss(cfg: FinetuneConfig, model: TaskModel) -> nn.Module:
    """The module the trainer trains for this task: forward(batch) -> (loss, logs), TaskModel as `model`."""
    return kind_module(cfg.task.kind).LOSS(model, cfg)


def make_optimizer(task_loss: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with layer-wise lr decay over the task model's trainable parameters."""
    tc = cfg.train
    return build_finetune_optimizer(task_loss.model, tc.lr, tc.weight_decay, cfg.task.layer_decay, tuple(tc.betas))


def prepare(cfg: FinetuneConfig) -> tuple[FinetuneConfig, VideoBackbone]:
    """(the config to record, the encoder): see the module docstring."""
    encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size)
    model = recorded_model(cfg.model, encoder)
    task, data = cfg.task, cfg.data
    if trains(task.kind):
        task = kind_module(task.kind).settle(task, data)
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

    if not trains(cfg.task.kind):
        raise ConfigError(f"task.kind: {cfg.task.kind} trains nothing; run `vssl eval RECIPE --checkpoint ENCODER`")
    if not cfg.data.shards and not cfg.data.sources:
        raise ConfigError("data.shards: no shards given (set it in the recipe or with --set data.shards=PATH)")
    torch.manual_seed(cfg.train.seed)  # a fresh encoder's and the head's init
    recorded, encoder = prepare(cfg)
    task_loss = make_task_loss(recorded, build_task_model(recorded, encoder))
    loader = functools.partial(build_train_loader, annotations=kind_module(cfg.task.kind).ANNOTATIONS)
    return train(recorded, lambda _: task_loss, loader, make_optimizer=make_optimizer)
