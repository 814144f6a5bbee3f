"""Task kinds: one module per `task.kind`, pipeline/tasks/<kind>.py, and what those modules share.

    from pipeline.tasks.kinds import kind_module, trains
    kind_module("tracking")        # the module pipeline/tasks/tracking.py
    trains("propagation")          # False: `vssl finetune` refuses it, `vssl eval` takes an encoder

The allowed kinds and the heads each takes are pipeline/config.py's TASK_HEADS (TaskKind is its
keys; there, so that reading a config imports no torch). Everything else about a kind sits in its module, which
`vssl finetune` (pipeline/tasks/finetune.py) and `vssl eval` (pipeline/tasks/evaluate.py) reach
only through kind_module. A kind module defines
    ANNOTATIONS       the per-frame annotations its training and evaluation read (the loader
                      decodes no others)
    evaluate(model, cfg, out) -> dict
                      its standard metrics ("metrics"), details and pictures ("pictures", under
                      out/eval/) for eval.json; model is the fine-tuned TaskModel, or for a kind
                      that trains nothing the encoder
and, when it trains (`vssl finetune`):
    build_head(cfg, dim) -> nn.Module          task.head on an encoder of width dim
    LOSS                                       the task loss class: LOSS(model, cfg), forward(batch)
                                               -> (loss, logs), visualize(batch) for pictures
    settle(task, data) -> TaskConfig           task fields the data decides (num_classes)
Adding a kind: its heads in TASK_HEADS, its options in TaskConfig (with their checks), and its module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import DataConfig, FinetuneConfig, TaskKind
from pipeline.data.normalize import normalize_video
from pipeline.objectives.common import to_uint8_frames


def kind_module(kind: TaskKind) -> ModuleType:
    """pipeline/tasks/<kind>.py (kind is a validated task.kind)."""
    return importlib.import_module(f"pipeline.tasks.{kind}")


def trains(kind: TaskKind) -> bool:
    """Whether `vssl finetune` trains this kind (its module has a task loss)."""
    return hasattr(kind_module(kind), "LOSS")


def zero_loss(module: nn.Module) -> Tensor:
    """A zero loss tied to every trainable parameter (a batch with nothing to learn from)."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def batch_pictures(video: Tensor, cfg: FinetuneConfig) -> np.ndarray:
    """(B, C, T, H, W) normalised -> (B, T, H, W, 3) uint8."""
    return np.stack([to_uint8_frames(clip, cfg.data.mean, cfg.data.std) for clip in video])


def clip_frames(video: Tensor, cfg: FinetuneConfig) -> np.ndarray:
    """One normalised clip (C, T, H, W), on any device -> (T, H, W, 3) uint8."""
    return to_uint8_frames(video.float().cpu(), cfg.data.mean, cfg.data.std)


def eval_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fresh_batches(data: DataConfig, patch_size: tuple[int, int, int], split: str,
                  annotations: tuple[str, ...] = ()):
    """Evaluation batches of `split` with every video's views counted once: (batch, rows to keep);
    the video normalised on the evaluation device, everything else on the CPU; `annotations` as
    build_loader takes them."""
    from pipeline.data.loader import build_loader

    device = eval_device()
    loader = build_loader(data, patch_size=patch_size, split=split, train=False, annotations=annotations,
                          device=None)  # uint8, normalised below straight from the workers' buffers
    seen: set[str] = set()
    for batch in loader:
        keep, fresh, previous = [], False, None
        for row, key in enumerate(batch["key"]):  # a video's views are consecutive rows
            if key != previous:
                fresh, previous = key not in seen, key
                seen.add(key)
            if fresh:
                keep.append(row)
        if keep:
            batch["video"] = normalize_video(batch["video"], device, data.mean, data.std)
            yield batch, torch.tensor(keep, dtype=torch.long)
