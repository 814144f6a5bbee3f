"""`vssl pretrain RECIPE [--set a.b=c ...]`: objective and loader from pipeline/train/build.py, then train.

    vssl pretrain recipes/pretrain/quickstart.yaml --set data.shards=runs/qs/shards --set train.max_steps=50

Auto-resumes from the newest complete checkpoint in train.output_dir (train.resume=never to
start over). Under `accelerate launch` every process runs this same command.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.train.build import build_objective, build_train_loader, recorded_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (recipes/pretrain/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.max_steps=10 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.trainer import TrainingError, train

    cfg = load_config(PretrainConfig, args.recipe, args.overrides)
    if not cfg.data.shards and not cfg.data.sources:  # a data.sources mix names its shards per source
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
