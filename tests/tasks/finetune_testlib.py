"""Shared pieces of the fine-tuning tests: tiny annotated shards (train + val) and a tiny recipe.
(`one_thread`, which they use, is tests/conftest.py's.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import FinetuneConfig, from_dict
from pipeline.testing.shards import write_shards

TINY_MODEL = {"name": "vit_tiny_joint",
              "overrides": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": [2, 8, 8]}}


def tiny_dataset(folder: Path) -> str:
    """Two folders of annotated shards (12 train, 4 val samples of 8 frames at 32 px, 5 classes);
    returns the data.shards spec naming both."""
    write_shards(folder / "train", [6, 6], annotate=True, num_frames=8, size=32)
    write_shards(folder / "val", [4], split="val", annotate=True, num_frames=8, size=32)
    return f"{folder / 'train'}::{folder / 'val'}"


def tiny_recipe(shards: str, out: Path, kind: str = "classification", head: str = "", **sections) -> dict:
    """A recipe dict; `sections` (data=..., task=..., train=..., model=...) update its sections."""
    recipe = {
        "data": {"shards": shards, "num_frames": 8, "frame_stride": 1, "crop_size": 32, "crop": "center",
                 "flip_prob": 0.0, "batch_size": 4, "num_workers": 0, "mask_type": "none",
                 "decode_timeout_s": 0.0},
        "model": {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_MODEL.items()},
        "task": {"kind": kind, "head": head, "template_size": 16},
        "train": {"output_dir": str(out), "max_steps": 4, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 2, "image_every": 2},
    }
    for name, values in sections.items():
        recipe[name].update(values)
    return recipe


def tiny_config(shards: str, out: Path, kind: str = "classification", head: str = "", **sections) -> FinetuneConfig:
    return from_dict(FinetuneConfig, tiny_recipe(shards, out, kind, head, **sections))


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path
