"""What a run shows and records: progress bar, metrics.jsonl, TensorBoard, pictures, run info.

Rank 0 writes into `train.output_dir`:

    run.json        config, dataset manifest hash, effective global batch, world size, versions
    metrics.jsonl   one JSON object per train.log_every optimizer steps: loss (mean over the
                    interval and the ranks), lr, grad_norm, clips_per_s and data_wait over the
                    interval's wall time, mfu (where the GPU's peak is known or train.peak_tflops
                    is set), data_skipped (bad samples rank 0's loader skipped since this process
                    began), the objective's logs (rank 0's, interval means), and the online
                    evaluation's figures (knn_top1, feature_std, rankme, dead_channels) in the
                    first record after it ran; on resume, lines past the resumed step are dropped first
    tb/             TensorBoard scalars and images (and, per train.report_to, W&B / MLflow runs:
                    pipeline/train/trackers.py)
    images/step-NNNNNN.png   the objective's picture (input / masked / reconstruction ...)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.config import PretrainConfig, to_dict
from pipeline.host import read_on_host
from pipeline.train.trackers import Trackers, flat_params

# dense (no sparsity) bf16 tensor-core peak FLOP/s per GPU, from vendor datasheets; the first
# key contained in the device name wins, so variants come before their family (an SXM H100
# reports itself as "NVIDIA H100 80GB HBM3", the others as "H100 PCIe" / "H100 NVL")
PEAK_BF16 = (("H200 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100 NVL", 835e12),
             ("H100 PCIe", 756e12), ("H100", 989e12), ("B200", 2250e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10G", 70e12), ("4090", 165e12))

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
    return next((v for k, v in PEAK_BF16 if k in device_name), None)


def train_flops_per_clip(objective, batch: dict) -> int | None:
    """FLOPs of one training step per clip, from the objective's analytic count (its `flops(batch)`
    -> forward FLOPs of (modules that learn, no-grad modules); common.step_flops), or None for
    an objective without one. Nothing runs: no forward, no collective, no RNG draw."""
    from pipeline.objectives.common import step_flops

    count = getattr(objective, "flops", None)
    return None if count is None else step_flops(*count(batch))


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records up to `last_step` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def warn(message: str) -> None:
    print(f"vssl: warning: {message}", file=sys.stderr, flush=True)


class Monitor:
    """Built on every rank (logging steps are collective); only rank 0 writes.

    Each optimizer step `accumulate`s its loss, grad norm and logs as device tensors (no host
    sync); every train.log_every steps (and at the last) `flush` averages them over the interval,
    reduces the loss over ranks, reads everything on the host once and writes one record; the
    clip rate, data wait and MFU cover the interval's wall time."""

    def __init__(self, cfg: PretrainConfig, acc, objective, resumed_from: int, zero3: bool = False) -> None:
        import torch

        self.cfg, self.acc, self.objective, self.zero3 = cfg, acc, objective, zero3
        self.main = acc.is_main_process
        self.out = Path(cfg.train.output_dir)
        self.trackers = self.bar = None
        self.peak = cfg.train.peak_tflops * 1e12 or None
        if self.peak is None and torch.cuda.is_available() and acc.device.type == "cuda":
            self.peak = peak_flops(torch.cuda.get_device_name(acc.device))
        self.flops_per_clip = None
        self.shown: dict[str, str] = {}  # the last online evaluation, on the progress bar
        self._reset(time.perf_counter())
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "images").mkdir(exist_ok=True)
        tc, dc = cfg.train, cfg.data
        global_batch = dc.batch_size * dc.repeated_samples * tc.grad_accum * acc.num_processes
        info = {"config": to_dict(cfg), "world_size": acc.num_processes, "global_batch_clips": global_batch,
                "manifest_sha256": manifest_hash(dc.shards), "versions": package_versions(),
                "device": str(acc.device), "argv": sys.argv, "resumed_from": resumed_from or None}
        (self.out / "run.json").write_text(json.dumps(info, indent=2, default=str))
        self.metrics_path = self.out / "metrics.jsonl"
        truncate_metrics(self.metrics_path, resumed_from)
        self.metrics = open(self.metrics_path, "a")
        params = {**flat_params(to_dict(cfg)), "manifest_sha256": info["manifest_sha256"] or "",
                  "world_size": acc.num_processes, "global_batch_clips": global_batch}
        self.trackers = Trackers(tc.report_to, self.out, params, resumed_from, self.warn)
        from tqdm import tqdm

        self.bar = tqdm(total=tc.max_steps, initial=resumed_from, desc="pretrain", unit="step",
                        dynamic_ncols=True, disable=None)

    def _reset(self, now: float) -> None:
        self.since, self.steps, self.clips, self.wait = now, 0, 0, 0.0
        self.sums: dict = {}
        self.noted: dict = {}

    def note(self, step: int, values: dict[str, float]) -> None:
        """Figures measured at `step` outside the step (online evaluation): to TensorBoard now, into
        the next metrics record, onto the progress bar."""
        if not self.main:
            return
        self.noted.update(values)
        self.shown.update({k: f"{v:.3f}" for k, v in values.items() if k in ("knn_top1", "rankme")})
        self.trackers.scalars({f"eval/{k}": v for k, v in values.items()}, step)

    def warn(self, message: str) -> None:
        if self.main:
            warn(message)

    def accumulate(self, loss, grad_norm, logs: dict, clips: int, data_wait: float) -> None:
        """One optimizer step's values (tensors stay on the device; nothing is read here)."""
        self.steps += 1
        self.clips += clips
        self.wait += data_wait
        for k, v in {"loss": loss, "grad_norm": grad_norm, **logs}.items():
            if v is not None and np.ndim(v) == 0:
                self.sums[k] = self.sums[k] + v if k in self.sums else v

    def flush(self, step: int, lr: float, loader, batch, extra: dict | None = None) -> dict:
        """Collective (every rank calls it at the same step): the record of the interval since the
        last flush, written by rank 0 and returned on every rank (loss averaged over ranks)."""
        import torch

        now = time.perf_counter()
        n = max(self.steps, 1)
        keys = list(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=self.acc.device).reshape(())
                              for k in keys]) / n if keys else torch.zeros(0, device=self.acc.device)
        if "loss" in keys and self.acc.num_processes > 1:
            loss = self.acc.reduce(values[keys.index("loss")].clone(), reduction="mean")
            values[keys.index("loss")] = loss
        record = {"step": step, **dict(zip(keys, read_on_host(values))), "lr": lr, **(extra or {}), **self.noted}
        elapsed = max(now - self.since, 1e-9)
        record["clips_per_s"] = self.clips / elapsed
        record["data_wait"] = self.wait / elapsed
        record["data_skipped"] = loader.stats()["skipped_total"]
        if self.peak is not None:  # MFU only where the hardware peak is known
            if self.flops_per_clip is None:
                self.flops_per_clip = train_flops_per_clip(self.acc.unwrap_model(self.objective), batch) or 0
            if self.flops_per_clip:
                record["mfu"] = record["clips_per_s"] * self.flops_per_clip / (self.peak * self.acc.num_processes)
        self._reset(now)
        if not self.main:
            return record
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.trackers.scalars({f"train/{k}": v for k, v in record.items() if k != "step"}, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", clips_s=f"{record['clips_per_s']:.1f}",
                                 wait=f"{100 * record['data_wait']:.0f}%", **self.shown)
        return record

    def picture(self, step: int, batch) -> None:
        """The objective's picture of `batch`, saved by rank 0. Under ZeRO-3 every rank must call
        this (the forward gathers partitioned weights collectively); otherwise rank 0 alone works."""
        import torch
        from PIL import Image

        if not (self.main or self.zero3):
            return
        objective = self.acc.unwrap_model(self.objective)
        if not hasattr(objective, "visualize"):
            return
        with torch.no_grad():
            image = objective.visualize(batch)
        if not self.main:
            return
        path = self.out / "images" / f"step-{step:06d}.png"
        Image.fromarray(image).save(path)
        self.trackers.image("train/picture", image, step)

    def close(self) -> None:
        if not self.main:
            return
        self.metrics.close()
        self.trackers.close()
        if self.bar is not None:
            self.bar.close()
