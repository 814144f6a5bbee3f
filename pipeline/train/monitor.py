"""What a run shows and records: progress bar, metrics.jsonl, TensorBoard, pictures, run info.

Rank 0 writes into `train.output_dir`:

    run.json        config, dataset manifest hash, effective global batch, world size, versions
    metrics.jsonl   one JSON object per optimizer step (step, loss, lr, grad_norm, clips_per_s,
                    data_wait, data_skipped: bad samples rank 0's loader skipped since this process began, ...);
                    on resume, lines past the resumed step are dropped first
    tb/             TensorBoard scalars (and images)
    images/step-NNNNNN.png   the objective's picture (input / masked / reconstruction ...)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.config import PretrainConfig, to_dict

# dense bf16 peak FLOP/s of accelerators whose name contains the key (vendor datasheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}

VERSIONED = ("vssl", "torch", "torchvision", "timm", "accelerate", "webdataset", "decord", "av", "deepspeed")


def package_versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def manifest_hash(shards: str) -> str | None:
    """sha256 of the manifest.json that `data.shards` names (a manifest or its folder), if any."""
    path = Path(shards.split("::")[0]) if shards else None
    if path is None:
        return None
    if path.is_dir():
        path = path / "manifest.json"
    if path.name == "manifest.json" and path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def train_flops_per_clip(module, batch: dict) -> float:
    """Model FLOPs of one training step per clip: 3x the measured forward (backward ~ 2x forward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(batch)
    return 3.0 * counter.get_total_flops() / batch["video"].shape[0]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records up to `last_step` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class Monitor:
    def __init__(self, cfg: PretrainConfig, acc, objective, resumed_from: int) -> None:
        self.cfg, self.acc, self.objective = cfg, acc, objective
        self.main = acc.is_main_process
        self.out = Path(cfg.train.output_dir)
        self.writer = self.bar = None
        self.peak = None
        self.flops_per_clip = None
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "images").mkdir(exist_ok=True)
        tc, dc = cfg.train, cfg.data
        global_batch = dc.batch_size * dc.repeated_samples * tc.grad_accum * acc.num_processes
        info = {"config": to_dict(cfg), "world_size": acc.num_processes, "global_batch_clips": global_batch,
                "manifest_sha256": manifest_hash(dc.shards), "versions": package_versions(),
                "argv": sys.argv, "resumed_from": resumed_from or None}
        (self.out / "run.json").write_text(json.dumps(info, indent=2, default=str))
        import torch

        if torch.cuda.is_available():
            self.peak = peak_flops(torch.cuda.get_device_name(0))
        self.metrics_path = self.out / "metrics.jsonl"
        truncate_metrics(self.metrics_path, resumed_from)
        self.metrics = open(self.metrics_path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=resumed_from + 1)
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            self.warn("tensorboard unavailable; scalars go to metrics.jsonl only")
        from tqdm import tqdm

        self.bar = tqdm(total=tc.max_steps, initial=resumed_from, desc="pretrain", unit="step",
                        dynamic_ncols=True, disable=None)

    def warn(self, message: str) -> None:
        if self.main:
            print(f"vssl: warning: {message}", file=sys.stderr, flush=True)

    def step(self, step: int, loss: float, lr: float, grad_norm: float, logs: dict, batch, model,
             step_time: float, data_wait: float, loader) -> None:
        if not self.main:
            return
        clips = batch["video"].shape[0] * self.cfg.train.grad_accum * self.acc.num_processes
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "clips_per_s": clips / max(step_time, 1e-9), "data_wait": data_wait / max(step_time, 1e-9),
                  "data_skipped": loader.stats()["skipped_total"],
                  **{k: float(v) for k, v in logs.items() if np.ndim(v) == 0}}
        if self.peak is not None:  # MFU only where the hardware peak is known
            if self.flops_per_clip is None:
                self.flops_per_clip = train_flops_per_clip(self.acc.unwrap_model(model), batch)
            record["mfu"] = record["clips_per_s"] * self.flops_per_clip / (self.peak * self.acc.num_processes)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{record['clips_per_s']:.1f}",
                                 wait=f"{100 * record['data_wait']:.0f}%")
        if step % self.cfg.train.image_every == 0 or step == self.cfg.train.max_steps:
            self.picture(step, batch)

    def picture(self, step: int, batch) -> None:
        import torch
        from PIL import Image

        objective = self.acc.unwrap_model(self.objective)
        if not hasattr(objective, "visualize"):
            return
        with torch.no_grad():
            image = objective.visualize(batch)
        path = self.out / "images" / f"step-{step:06d}.png"
        Image.fromarray(image).save(path)
        if self.writer is not None:
            self.writer.add_image("train/picture", image, step, dataformats="HWC")

    def close(self) -> None:
        if not self.main:
            return
        self.metrics.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
