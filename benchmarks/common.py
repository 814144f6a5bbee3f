"""Helpers shared by benchmarks (not a benchmark itself: the runner skips this module).

    raw, shards = synthetic_shards(root, per_class=16, val_fraction=0.0, max_samples=16)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import main as vssl


def synthetic_shards(root: Path, per_class: int, val_fraction: float, max_samples: int,
                     seed: int = 0) -> tuple[Path, Path]:
    """`vssl synth` (16 frames, 64 px) into root/raw, then `vssl shard` into root/shards."""
    raw, shards = root / "raw", root / "shards"
    for argv in (["synth", "--out", str(raw), "--per-class", str(per_class), "--frames", "16", "--size", "64",
                  "--val-fraction", str(val_fraction), "--seed", str(seed), "--workers", "2"],
                 ["shard", str(raw / "kinetics.csv"), "--root", str(raw / "videos"), "--classes",
                  str(raw / "classes.txt"), "--out", str(shards), "--workers", "2", "--max-samples",
                  str(max_samples), "--no-progress"]):
        if vssl(argv) != 0:
            raise RuntimeError(f"benchmarks: `vssl {argv[0]}` of the synthetic data failed")
    return raw, shards
