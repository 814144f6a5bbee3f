"""Training memory per GPU of a pretrain or fine-tune recipe, measured on the CPU and extrapolated.

    python -m benchmarks.memory recipes/pretrain/predictive_vit_l_k400.yaml
    python -m benchmarks.memory recipes/finetune/classification_vit_l_k400.yaml --set task.num_classes=400

Why on the CPU: sizing a recipe for an 80-141 GB GPU should not need one. What it does:
- Activations: one training step (forward under bf16 autocast, backward) of the recipe's objective
  or task model at the recipe's clip size, with the encoder cut to 1 and to 2 blocks, on 1 and 2
  clips; the peak of live tensor bytes is read by benchmarks/model.py's LiveStorageBytes. Memory
  is linear in clips and in blocks, so per clip = m(1 block) + (depth - 1) x (m(2 blocks) -
  m(1 block)), each m the 2-clip minus the 1-clip peak.
- State: parameters of the full-depth model built on the meta device: 16 B per trained parameter
  (fp32 weight, gradient, two AdamW moments) + 4 B per DDP gradient bucket entry, and 4 B per
  frozen one (the EMA target encoder, a frozen probe encoder).
- Per GPU = state + clips per GPU (data.batch_size x data.repeated_samples) x per clip.
Not counted (so the printed figure is below what a GPU reports): the CUDA context (~0.5-1 GB), the
caching allocator's slack (typically +10-20%), NCCL buffers, the loader's pinned batches. The CPU
runs SDPA's flash kernel too, so attention costs the same O(tokens) as on a GPU. The printed
figure is an estimate; `python -m benchmarks gpu` measures the real peak on a GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.model import LiveStorageBytes
from pipeline.config import FinetuneConfig, PretrainConfig, load_config, read_yaml

GB = 1e9


def _is_finetune(recipe: str) -> bool:
    return "task" in read_yaml(recipe)


def _build(recipe: str, overrides: list[str], depth: int | None, meta: bool = False):
    """(the module the trainer would train, its config) with the encoder cut to `depth` blocks."""
    from pipeline.models.build import build_encoder
    from pipeline.tasks.finetune import build_task_model, make_task_loss
    from pipeline.train.build import build_objective

    cut = [f"model.overrides.depth={depth}"] if depth else []
    with torch.device("meta" if meta else "cpu"):
        if _is_finetune(recipe):
            cfg = load_config(FinetuneConfig, recipe, [*overrides, *cut])
            if not cfg.task.num_classes:
                raise SystemExit("task.num_classes: 0 reads the manifest's classes; "
                                 "give it with --set task.num_classes=N")
            encoder = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size)
            return make_task_loss(cfg, build_task_model(cfg, encoder)), cfg
        cfg = load_config(PretrainConfig, recipe, [*overrides, *cut])
        return build_objective(cfg), cfg


def _encoder(module):
    return module.model.encoder if hasattr(module, "model") else module.encoder


def _batch(module, cfg, clips: int) -> dict:
    """A loader-like batch: normalised video, labels, and the recipe's mask on the encoder's grid."""
    from pipeline.data.masking import make_masker

    d = cfg.data
    video = torch.randn(clips, 3, d.num_frames, d.crop_size, d.crop_size)
    batch = {"video": video, "label": torch.zeros(clips, dtype=torch.long), "key": [str(i) for i in range(clips)]}
    if d.mask_type != "none":
        pt, ph, pw = _encoder(module).patch_size
        grid = (d.num_frames // pt, d.crop_size // ph, d.crop_size // pw)
        batch["mask"] = make_masker(d.mask_type, d.mask_ratio, grid)(clips, torch.Generator().manual_seed(0))
    return batch


def step_peak(recipe: str, overrides: list[str], depth: int, clips: int) -> int:
    """Peak live bytes created during one forward + backward on `clips` clips at `depth` blocks."""
    torch.manual_seed(0)
    module, cfg = _build(recipe, overrides, depth)
    module.train()
    batch = _batch(module, cfg, clips)
    with LiveStorageBytes() as probe:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = module(batch)
        loss.backward()
    return probe.peak


def state_bytes(recipe: str, overrides: list[str]) -> tuple[int, int, float]:
    """(trained parameters, frozen parameters, bytes of weights + gradients + AdamW + DDP buckets)."""
    module, _ = _build(recipe, overrides, None, meta=True)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trained, frozen, 20.0 * trained + 4.0 * frozen


def estimate(recipe: str, overrides: list[str]) -> dict:
    module, cfg = _build(recipe, overrides, None, meta=True)
    depth = len(_encoder(module).blocks)
    peaks = {(d, c): step_peak(recipe, overrides, d, c) for d in (1, 2) for c in (1, 2)}
    per_clip_1 = peaks[1, 2] - peaks[1, 1]
    per_block = (peaks[2, 2] - peaks[2, 1]) - per_clip_1
    per_clip = per_clip_1 + (depth - 1) * per_block
    trained, frozen, state = state_bytes(recipe, overrides)
    clips = cfg.data.batch_size * cfg.data.repeated_samples
    return {"depth": depth, "per_clip_gb": per_clip / GB, "per_block_per_clip_mb": per_block / 1e6,
            "trained_params_m": trained / 1e6, "frozen_params_m": frozen / 1e6, "state_gb": state / GB,
            "clips_per_gpu": clips, "per_gpu_gb": (state + clips * per_clip) / GB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    r = estimate(args.recipe, args.overrides)
    print(f"{args.recipe}: depth {r['depth']}, {r['trained_params_m']:.1f}M trained + {r['frozen_params_m']:.1f}M "
          f"frozen parameters -> {r['state_gb']:.1f} GB of state; {r['per_clip_gb'] * 1e3:.0f} MB per clip "
          f"({r['per_block_per_clip_mb']:.1f} MB per block); {r['clips_per_gpu']} clips per GPU -> "
          f"{r['per_gpu_gb']:.1f} GB per GPU (estimate, before CUDA context and allocator slack)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
