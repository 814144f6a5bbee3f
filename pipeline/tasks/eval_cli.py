"""`vssl eval RECIPE [--checkpoint FOLDER] [--out DIR] [--set a.b=c ...]`: a task's standard metric.

    vssl eval recipes/finetune/classification.yaml --checkpoint runs/finetune/classification
    vssl eval recipes/finetune/propagation.yaml --checkpoint runs/pretrain      # any encoder
    vssl eval recipes/finetune/propagation.yaml                                 # untrained baseline

Prints the metrics and writes eval.json + pictures (eval/*.png) into the checkpoint's run folder
or --out (pipeline/tasks/evaluate.py says what each task measures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import FinetuneConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (recipes/finetune/*.yaml): the data and task to evaluate on")
    parser.add_argument("--checkpoint", metavar="FOLDER",
                        help="a `vssl finetune` run or step folder (propagation: any encoder checkpoint)")
    parser.add_argument("--out", metavar="DIR", help="where eval.json and pictures go (default: the run folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set data.eval_clips=2 (repeatable)")


def print_report(report: dict) -> None:
    scores = "  ".join(f"{name} {value:.4f}" for name, value in report["metrics"].items()
                       if isinstance(value, float))
    print(f"eval {report['task']} ({report['model']}, {report['checkpoint']}): {scores}")
    print(f"eval: wrote {Path(report['output']) / 'eval.json'} and {len(report['pictures'])} picture(s)")


def run(args: argparse.Namespace) -> int:
    from pipeline.tasks.evaluate import evaluate

    cfg = load_config(FinetuneConfig, args.recipe, args.overrides)
    print_report(evaluate(cfg, args.checkpoint, args.out))
    return 0
