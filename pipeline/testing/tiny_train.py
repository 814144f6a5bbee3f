"""Shared pieces of the trainer tests: tiny shards, a tiny recipe, running `vssl pretrain`."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards

ROOT = Path(__file__).resolve().parents[2]  # the checkout (the source root of an install)


def tiny_shards(folder: Path) -> Path:
    write_shards(folder, [6, 5, 7], num_frames=8, size=32)
    return folder


def tiny_recipe(path: Path, shards: Path, out: Path, objective: str = "videomae", **train) -> Path:
    recipe = {
        "data": {"shards": str(shards), "num_frames": 8, "frame_stride": 1, "crop_size": 32, "crop": "center",
                 "batch_size": 2, "num_workers": 0, "mask_type": "tube", "mask_ratio": 0.75,
                 "decode_timeout_s": 0.0},
        "model": {"name": "vit_tiny_joint",
                  "overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [2, 8, 8]}},
        "objective": {"name": objective, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "train": {"output_dir": str(out), "max_steps": 6, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 2, "image_every": 100, **train},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def pretrain_cmd(recipe: Path, *overrides: str) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.cli", "pretrain", str(recipe)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def env(**extra: str) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    e.pop("WORLD_SIZE", None)
    return e


def run(cmd: list[str], timeout: float = 240, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics steps not contiguous"
    return [r["loss"] for r in records]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BothRanks:
    """One process's loader yielding rank 0's and rank 1's batches concatenated (same global batch)."""

    def __init__(self, cfg, patch_size):
        self.loaders = [build_loader(cfg.data, rank=r, world_size=2, patch_size=patch_size) for r in (0, 1)]

    def __iter__(self):
        for pair in zip(*self.loaders):
            yield {k: torch.cat([b[k] for b in pair]) if torch.is_tensor(pair[0][k]) else pair[0][k]
                   for k in pair[0]}

    def set_epoch(self, epoch):
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def state_dict(self):
        return {}

    def stats(self):
        return {"skipped_total": 0, "skipped": {}}


def nan_losses(build_objective, calls: list[int]):
    """`build_objective`, its objective's loss made NaN on the forward calls numbered in `calls`
    (from 1). With train.grad_accum 1, call k + 1 is the first try after k steps and a retried step
    takes the next calls: [4, 5, 6] makes the step after step 3 non-finite three times running."""
    def build(cfg):
        objective = build_objective(cfg)
        forward, count, poisoned = objective.forward, itertools.count(1), set(calls)

        def nan_forward(batch):
            loss, logs = forward(batch)
            return (loss * float("nan") if next(count) in poisoned else loss), logs

        objective.forward = nan_forward
        return objective
    return build


def assert_same_weights(mine: dict, reference: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for name, value in reference.items():
        got = mine[name]
        if name.endswith(("in_proj_bias", "qkv.bias")):
            # the key bias gets a zero gradient in exact arithmetic (softmax ignores it), so its
            # rounding noise, which Adam scales to full-size steps, differs; compare q and v only
            d = value.shape[0] // 3
            got, value = torch.cat([got[:d], got[2 * d:]]), torch.cat([value[:d], value[2 * d:]])
        torch.testing.assert_close(got, value, rtol=rtol, atol=atol, msg=name)
