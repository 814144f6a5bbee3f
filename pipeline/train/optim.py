"""Optimizer and learning-rate schedule for pretraining and fine-tuning.

AdamW (torch) over timm's parameter groups: no weight decay on norms, biases (1-D params) and on
position embeddings / cls and mask tokens. The schedule is a pure function of the step
(linear warmup, then cosine to `min_lr`), so resuming only needs the step number.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "rel_pos", "relative_position")


def no_decay_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(k in n for k in NO_DECAY_NAMES)]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """torch AdamW; its fused kernel (one launch for every tensor) when every parameter is on a
    CUDA device - the trainer moves the model there before building the optimizer."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay_names(model))
    for g in groups:
        g["base_lr"] = lr
    return adamw(groups, lr, betas)


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr, keeping per-group scales (e.g. layer decay) given as `lr_scale`."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
