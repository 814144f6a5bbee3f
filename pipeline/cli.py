"""The `vssl` entry point: parses the verb and hands over to the module that owns it.

    vssl --help
    vssl shard --help

Each verb lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`, and
is imported only when chosen, so `vssl --help` stays fast. This table is the one place in
pipeline/ that names data_prep modules (by string, for dispatch only).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("data_prep.synth_cli", "write a labelled synthetic video dataset (mp4 + CSV + DAVIS)"),
    "shard": ("data_prep.shard_cli", "raw videos -> WebDataset tar shards + manifest.json"),
    "inspect": ("data_prep.inspect_cli", "verify shards against their manifest; show samples"),
    "pretrain": ("pipeline.train.pretrain_cli", "pretrain an encoder from a YAML recipe (VideoMAE or predictive)"),
    "quickstart": ("pipeline.quickstart", "run the whole pipeline end to end on synthetic data"),
    "convert": ("pipeline.models.convert_cli", "import a checkpoint (HF, VideoMAE .pth, timm ViT) as a backbone folder"),
    "export": ("pipeline.models.export_cli", "export an encoder as a Hugging Face transformers folder (VideoMAE, TimeSformer, ViViT)"),
    "finetune": ("pipeline.tasks.finetune_cli", "fine-tune an encoder on a task (classification, segmentation, tracking)"),
    "eval": ("pipeline.tasks.eval_cli", "a task's standard metric for a checkpoint, with pictures (eval.json)"),
    "probe": ("pipeline.probe.cli", "frozen evaluation of an encoder: k-NN, linear and attentive probes (probe.json)"),
}


def _parser(verb: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vssl",
        description="Self-supervised video pretraining: shard -> pretrain -> finetune.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    module = importlib.import_module(VERBS[args.verb][0])
    from pipeline.config import ConfigError
    from pipeline.storage import StorageError

    try:
        return int(module.run(args) or 0)
    except (ConfigError, StorageError) as e:  # one line naming the key or URL, no traceback
        print(f"vssl {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vssl {args.verb}: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """A verb that trained under a launcher leaves its process group up (a Python caller may go
    on using it); the process ends it here, once, before exiting."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
