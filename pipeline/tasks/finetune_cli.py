"""`vssl finetune RECIPE [--init CHECKPOINT] [--set a.b=c ...] [--eval]`: train a task on an encoder.

    vssl finetune recipes/finetune/classification.yaml --init runs/pretrain --set data.shards=runs/qs/shards
    vssl finetune recipes/finetune/linear_probe.yaml --init hf-videomae-small/ --set task.label_fraction=0.1
    vssl finetune recipes/finetune/segmentation.yaml            # no --init: from scratch

--init takes a `vssl pretrain` run or step folder, a backbone folder or any checkpoint
`vssl convert` reads (pipeline/models/build.py: load_encoder); it sets model.pretrained. Training is
pipeline/train/trainer.py (auto-resume, checkpoints, metrics.jsonl, TensorBoard, pictures in
train.output_dir). --eval then runs `vssl eval` on the last checkpoint with the same recipe.
"""

from __future__ import annotations

import argparse

from pipeline.config import FinetuneConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (recipes/finetune/*.yaml)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="encoder to start from (sets model.pretrained); without it: from scratch")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--eval", action="store_true", help="evaluate the last checkpoint afterwards")


def run(args: argparse.Namespace) -> int:
    from pipeline.tasks.finetune import finetune

    overrides = list(args.overrides) + ([f"model.pretrained={args.init}"] if args.init else [])
    cfg = load_config(FinetuneConfig, args.recipe, overrides)
    result = finetune(cfg)
    print(f"finetune: {result.step} steps, last loss {result.last_loss:.4f}, "
          f"checkpoints in {result.output_dir / 'checkpoints'}")
    if args.eval:
        from pipeline.tasks.eval_cli import print_report
        from pipeline.tasks.evaluate import evaluate

        print_report(evaluate(cfg, result.output_dir))
    return 0
