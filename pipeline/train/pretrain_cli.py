"""`vssl pretrain RECIPE [--set a.b=c ...]`: build backbone, objective and loader, then train.

    vssl pretrain recipes/pretrain/quickstart.yaml --set data.shards=runs/qs/shards --set train.max_steps=50

Auto-resumes from the newest complete checkpoint in train.output_dir (train.resume=never to
start over). Under `accelerate launch` every process runs this same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pipeline.config import ConfigError, PretrainConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (recipes/pretrain/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.max_steps=10 (repeatable)")


def recorded_config(cfg: PretrainConfig) -> PretrainConfig:
    """The config to train with and record (run.json, every checkpoint's metadata.json): with
    model.pretrained, model.name/overrides spell out the checkpoint's architecture
    (build.recorded_model), so `vssl finetune --init` rebuilds this run's encoder from its own
    checkpoints. That costs one more load of the weights; from-scratch configs pass unchanged."""
    from pipeline.models.build import pretrained_encoder, recorded_model

    if not cfg.model.pretrained:
        return cfg
    return dataclasses.replace(cfg, model=recorded_model(cfg.model, pretrained_encoder(cfg.model)[0]))


def build_objective(cfg: PretrainConfig):
    """The objective on build_encoder's encoder at the clip size of `data`."""
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


def build_train_loader(cfg: PretrainConfig, rank: int, world_size: int, objective):
    from pipeline.data.loader import build_loader

    return build_loader(cfg.data, rank=rank, world_size=world_size,
                        patch_size=objective.encoder.patch_size, split="train")


def run(args: argparse.Namespace) -> int:
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.trainer import TrainingError, train

    cfg = load_config(PretrainConfig, args.recipe, args.overrides)
    if not cfg.data.shards:
        raise ConfigError("data.shards: no shards given (set it in the recipe or with --set data.shards=PATH)")
    try:
        result = train(recorded_config(cfg), build_objective, build_train_loader)
    except (TrainingError, CheckpointError) as e:
        print(f"vssl pretrain: error: {e}", file=sys.stderr, flush=True)
        return 1
    skipped = sum(result.data_skipped.values())
    print(f"pretrain: {result.step} steps, last loss {result.last_loss:.4f}, "
          f"checkpoints in {result.output_dir / 'checkpoints'}"
          + (f"; {skipped} bad samples skipped {result.data_skipped}" if skipped else ""))
    return 0
