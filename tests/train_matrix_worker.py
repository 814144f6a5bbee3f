"""Runs several pretraining cases inside one launched job, so the distributed matrix pays for one
`accelerate launch` (process start, imports, rendezvous, DeepSpeed's op build) per engine, not per
case.

    accelerate launch ... -m tests.train_matrix_worker CASES.json

CASES.json: [{"recipe": PATH, "overrides": ["k=v", ...]}, ...]. Each case trains to
train.max_steps with checkpoints every 2 steps; then the last checkpoint is removed and the case
runs again, resuming from the one before (its first trace is kept as metrics.first.jsonl, so the
test compares the resumed steps with it). A case that raises is recorded in its output folder
(error.txt) and the next one runs.
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


def run_case(recipe: str, overrides: list[str]) -> None:
    from pipeline.config import PretrainConfig, load_config
    from pipeline.train import checkpoint as ck
    from pipeline.train.pretrain_cli import build_objective, build_train_loader
    from pipeline.train.trainer import train

    cfg = load_config(PretrainConfig, recipe, overrides)
    out = Path(cfg.train.output_dir)
    train(cfg, build_objective, build_train_loader)
    _reset_accelerate()
    if dist.get_rank() == 0:
        shutil.copy(out / "metrics.jsonl", out / "metrics.first.jsonl")
        shutil.copytree(ck.latest_checkpoint(out / "checkpoints"), out / "final")
        shutil.rmtree(ck.latest_checkpoint(out / "checkpoints"))
    dist.barrier()
    train(cfg, build_objective, build_train_loader)
    _reset_accelerate()


def main(path: str) -> int:
    for case in json.loads(Path(path).read_text()):
        try:
            run_case(case["recipe"], case["overrides"])
        except Exception:
            out = Path(next(o.split("=", 1)[1] for o in case["overrides"] if o.startswith("train.output_dir=")))
            out.mkdir(parents=True, exist_ok=True)
            (out / f"error-rank{os.environ.get('RANK', '0')}.txt").write_text(traceback.format_exc())
            if dist.is_initialized():
                raise  # the other rank is waiting in a collective: end the job rather than hang
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
