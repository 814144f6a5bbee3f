"""`vssl probe RECIPE [--init CHECKPOINT] [--out DIR] [--set a.b=c ...]`: frozen evaluation.

    vssl probe recipes/probe/synth.yaml --init runs/quickstart/pretrain     # our run
    vssl probe recipes/probe/synth.yaml --init videomae_b.pth                # any checkpoint --init takes
    vssl probe recipes/probe/synth.yaml                                      # random init: the baseline

Prints k-NN, linear and attentive probe top-1 (probe.methods) of the frozen encoder on
probe.eval_split and writes probe.json (pipeline/probe/run.py says how each is chosen).
"""

from __future__ import annotations

import argparse

from pipeline.config import ProbeConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (recipes/probe/*.yaml): data, encoder and probe settings")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="the encoder: a vssl run or step folder, a backbone folder, or an HF / VideoMAE / "
                             "timm checkpoint (sets model.pretrained); without it a random-init encoder")
    parser.add_argument("--out", metavar="DIR", help="where probe.json and the feature cache go (probe.output_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set probe.methods=[knn] (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pipeline.probe.run import run_probes, table

    overrides = list(args.overrides) + ([f"model.pretrained={args.init}"] if args.init else [])
    report = run_probes(load_config(ProbeConfig, args.recipe, overrides), args.out)
    print(table(report))
    print(f"probe: wrote {report['output']}")
    return 0
