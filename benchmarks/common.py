"""Helpers shared by benchmarks (not a benchmark itself: the runner skips this module).

    raw, shards = synthetic_shards(root, per_class=16, val_fraction=0.0, max_samples=16)
    raw, shards = synthetic_shards(root, per_class=32, val_fraction=0.0, max_samples=8, size=256,
                                   frames=64, gop=16, workers=16, davis=False)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import main as vssl


def synthetic_shards(root: Path, per_class: int, val_fraction: float, max_samples: int, seed: int = 0,
                     size: int = 64, frames: int = 16, gop: int | None = None, workers: int = 2,
                     davis: bool = True) -> tuple[Path, Path]:
    """`vssl synth` (`frames` frames of `size` px, keyframes every `gop`) into root/raw, then
    `vssl shard` (at most `max_samples` videos per shard) into root/shards."""
    raw, shards = root / "raw", root / "shards"
    synth = ["synth", "--out", str(raw), "--per-class", str(per_class), "--frames", str(frames), "--size", str(size),
             "--val-fraction", str(val_fraction), "--seed", str(seed), "--workers", str(workers)]
    synth += ["--gop", str(gop)] if gop else []
    synth += [] if davis else ["--no-davis"]
    for argv in (synth,
                 ["shard", str(raw / "kinetics.csv"), "--root", str(raw / "videos"), "--classes",
                  str(raw / "classes.txt"), "--out", str(shards), "--workers", str(workers), "--inputs-per-shard",
                  str(max_samples), "--no-progress"]):
        if vssl(argv) != 0:
            raise RuntimeError(f"benchmarks: `vssl {argv[0]}` of the synthetic data failed")
    return raw, shards
