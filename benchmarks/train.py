"""Training throughput: does the loader keep the model fed?

    python -m benchmarks train [--quick]

Runs the quickstart recipe (tiny ViT, VideoMAE, 16x64x64 clips) twice through the real trainer:
once reading the synthetic shards with the streaming loader, once on one batch held in memory
(the model-only peer: same model, optimizer, logging, checkpoints). Reports the streamed run's
clips/s, its data-wait fraction (time blocked in next(loader) / step time, median over steps
after warm-up) and its clips/s relative to the model-only run. Goal: data wait < 10%.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import synthetic_shards
from pipeline.config import PretrainConfig, load_config
from pipeline.recipe_files import recipe_path
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train

RECIPE = recipe_path("pretrain/quickstart.yaml")
WARMUP = 3


class MemoryLoader:
    """The first batch of a real loader, served forever (data from memory)."""

    def __init__(self, loader, steps: int) -> None:
        self.batch, self.steps = next(iter(loader)), steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))

    def set_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def stats(self) -> dict:
        return {"skipped_total": 0, "skipped": {}}  # what the trainer and its monitor log


def _steady(out: Path) -> tuple[float, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    return (statistics.median(r["clips_per_s"] for r in records),
            statistics.median(r["data_wait"] for r in records))


def run(quick: bool) -> dict:
    steps = 15 if quick else 60
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, shards = synthetic_shards(tmp, per_class=4 if quick else 16, val_fraction=0.0, max_samples=16)
        common = [f"data.shards={shards}", f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
                  f"train.image_every={steps}", "train.resume=never"]
        cfg = load_config(PretrainConfig, RECIPE, common + [f"train.output_dir={tmp / 'streamed'}"])
        train(cfg, build_objective, build_train_loader)
        streamed_cps, wait = _steady(tmp / "streamed")

        cfg = load_config(PretrainConfig, RECIPE, common + [f"train.output_dir={tmp / 'memory'}"])
        train(cfg, build_objective, lambda c, r, w, obj: MemoryLoader(build_train_loader(c, r, w, obj), steps + 1))
        memory_cps, _ = _steady(tmp / "memory")
    print(f"train: streamed {streamed_cps:.1f} clips/s (data wait {100 * wait:.1f}%), "
          f"model-only {memory_cps:.1f} clips/s, {steps} steps of {cfg.data.batch_size} clips")
    return {"metrics": {"clips_per_s": streamed_cps, "data_wait_fraction": wait,
                        "vs_model_only": streamed_cps / memory_cps},
            "goals": {"data_wait_fraction": "< 0.10"}}
