"""Runs several pretraining cases inside one launched job, so the distributed matrix pays for one
`accelerate launch` (process start, imports, rendezvous, DeepSpeed's op build) per engine, not per
case.

    accelerate launch ... -m tests.train.train_matrix_worker CASES.json

CASES.json: [{"recipe": PATH, "overrides": ["k=v", ...], "record_keys": false, "resume_check": true}, ...].
Each case trains to
train.max_steps with checkpoints every 2 steps; then the last checkpoint is removed and the case
runs again, resuming from the one before (its first trace is kept as metrics.first.jsonl, so the
test compares the resumed steps with it). A case that raises is recorded in its output folder
(error-rankR.txt); with "record_keys" every batch's sample keys go to keys-rankR.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch.distributed as dist


def _reset_accelerate() -> None:
    """The next case's Accelerator re-reads the launch (its DeepSpeed config afresh); the process
    group, which train() leaves up, is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _record_keys(out: Path) -> None:
    """Append the sample keys of every batch the trainer takes to out/keys-rankR.jsonl."""
    from pipeline.train import trainer

    original = trainer.batch_to_device
    path = out / f"keys-rank{dist.get_rank() if dist.is_initialized() else os.environ.get('RANK', '0')}.jsonl"

    def recording(batch, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"keys": list(batch["key"])}) + "\n")
        return original(batch, *args, **kwargs)

    trainer.batch_to_device = recording


def run_case(recipe: str, overrides: list[str], record_keys: bool = False, resume_check: bool = True) -> None:
    from pipeline.config import PretrainConfig, load_config
    from pipeline.train import checkpoint as ck
    from pipeline.train.build import build_objective, build_train_loader
    from pipeline.train.trainer import train

    cfg = load_config(PretrainConfig, recipe, overrides)
    out = Path(cfg.train.output_dir)
    if record_keys:
        _record_keys(out)
    train(cfg, build_objective, build_train_loader)
    _reset_accelerate()
    if not resume_check:
        return
    if dist.get_rank() == 0:
        shutil.copy(out / "metrics.jsonl", out / "metrics.first.jsonl")
        shutil.rmtree(ck.latest_checkpoint(out / "checkpoints"))
    dist.barrier()
    train(cfg, build_objective, build_train_loader)
    _reset_accelerate()


def main(path: str) -> int:
    from pipeline.config import ConfigError

    for case in json.loads(Path(path).read_text()):
        try:
            run_case(case["recipe"], case["overrides"], case.get("record_keys", False), case.get("resume_check", True))
        except Exception as e:
            out = Path(next(o.split("=", 1)[1] for o in case["overrides"] if o.startswith("train.output_dir=")))
            out.mkdir(parents=True, exist_ok=True)
            (out / f"error-rank{os.environ.get('RANK', '0')}.txt").write_text(traceback.format_exc())
            if isinstance(e, ConfigError):  # refused on every rank before training: go on
                _reset_accelerate()
                continue
            if dist.is_initialized():
                raise  # the other rank may wait in a collective: end the job rather than hang
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
