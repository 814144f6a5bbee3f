"""What every entry point hands the trainer: the pretraining objective, the config a run records,
and the one training-loader builder (pretraining, fine-tuning, benchmarks).

    from pipeline.train.build import build_objective, build_train_loader, recorded_config
    from pipeline.train.trainer import train
    train(recorded_config(cfg), build_objective, build_train_loader)

The encoder comes from pipeline/models/build.py's build_encoder; the loader from
pipeline/data/loader.py's build_loader, at the patch size of the objective's encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Collection

from torch import nn

from pipeline.config import ConfigError, PretrainConfig


def recorded_config(cfg: PretrainConfig) -> PretrainConfig:
    """The config to train with and record (run.json, every checkpoint's metadata.json): with
    model.pretrained, model.name/overrides spell out the checkpoint's architecture
    (build.recorded_model), so `vssl finetune --init` rebuilds this run's encoder from its own
    checkpoints. That costs one more load of the weights; from-scratch configs pass unchanged."""
    from pipeline.models.build import pretrained_encoder, recorded_model

    if not cfg.model.pretrained:
        return cfg
    return dataclasses.replace(cfg, model=recorded_model(cfg.model, pretrained_encoder(cfg.model)[0]))


def build_objective(cfg: PretrainConfig) -> nn.Module:
    """The pretraining objective on build_encoder's encoder at the clip size of `data`."""
    from pipeline.models.build import build_encoder
    from pipeline.objectives.predictive import NextFramePredictive
    from pipeline.objectives.videomae import VideoMAE

    encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size)
    if cfg.objective.name == "videomae" and cfg.data.mask_type == "none":
        raise ConfigError("data.mask_type: videomae needs a mask (tube, random, running_cell or multiblock)")
    objective = VideoMAE if cfg.objective.name == "videomae" else NextFramePredictive
    try:
        return objective(encoder, cfg.objective, mean=cfg.data.mean, std=cfg.data.std)
    except ValueError as e:  # an objective option this encoder cannot honour; the message names it
        raise ConfigError(str(e)) from None


def encoder_of(objective: nn.Module) -> nn.Module | None:
    """The encoder inside a pretraining objective (`.encoder`) or a task loss (`.model.encoder`)."""
    return getattr(objective, "encoder", None) or getattr(getattr(objective, "model", None), "encoder", None)


def build_train_loader(cfg: PretrainConfig, rank: int, world_size: int, objective: nn.Module,
                       annotations: Collection[str] = ()):
    """The loader of cfg.data's train split for one rank, masks at the patch size of the objective's
    encoder; `annotations` are the per-frame members the objective reads (build_loader's)."""
    from pipeline.data.loader import build_loader

    return build_loader(cfg.data, rank=rank, world_size=world_size, patch_size=encoder_of(objective).patch_size,
                        split="train", annotations=annotations)
