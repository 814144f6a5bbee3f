"""Layer-wise learning-rate decay for fine-tuning: earlier encoder layers learn more slowly.

    from pipeline.tasks.layer_decay import build_finetune_optimizer
    optimizer = build_finetune_optimizer(task_model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    set_lr(optimizer, cosine_lr(step, ...))     # pipeline/train/optim.py: lr x group["lr_scale"]

Layer ids come from parameter names, for any backbone that keeps its blocks in numbered lists:
`blocks.N.` (plain ViTs; also `temporal_blocks.N.`) or `stages.S.B.` (MViT, Video Swin; a
stage's patch-merging block counts as a block). Blocks are numbered 1..L in the order their
parameters are registered (= forward order for these backbones). A parameter outside every
block gets the layer after the blocks registered before it: the stem, patch and position
embeddings and cls / mask tokens (registered first) are layer 0, a norm between two block
lists sits with the next list's first block, the final norm is L + 1; the task head is L + 1 too.
A parameter of layer i has lr_scale = layer_decay ** (L + 1 - i).

Weight decay is off for 1-D parameters (norms, biases) and for position embeddings / tokens /
relative-position tables (pipeline.train.optim.no_decay_names). Frozen parameters are left out.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pipeline.train.optim import adamw, no_decay_names

BLOCK_NAME = re.compile(r"^(.*?(?:blocks|stages\.\d+)\.\d+)\.")


def encoder_layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, L) for an encoder's parameters; ids run 0..L+1."""
    blocks: dict[str, int] = {}
    ids = {}
    for name, _ in encoder.named_parameters():
        match = BLOCK_NAME.match(name)
        if match:
            ids[name] = blocks.setdefault(match.group(1), len(blocks) + 1)
        else:
            ids[name] = len(blocks) + 1 if blocks else 0
    return ids, len(blocks)


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float,
                             encoder_name: str = "encoder") -> list[dict]:
    """AdamW parameter groups with `lr_scale` per layer and weight decay only where it belongs.

    `model` is a TaskModel-like module whose encoder is the attribute `encoder_name` (every other
    parameter is head, layer L + 1), or an encoder on its own.
    """
    encoder = getattr(model, encoder_name, model)
    prefix = "" if encoder is model else f"{encoder_name}."
    encoder_ids, num_blocks = encoder_layer_ids(encoder)
    skip_decay = set(no_decay_names(model))
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        inside = name.startswith(prefix) and name[len(prefix):] in encoder_ids
        layer = encoder_ids[name[len(prefix):]] if inside else num_blocks + 1
        decay = param.ndim > 1 and name not in skip_decay
        group = groups.setdefault((layer, decay), {
            "params": [], "param_names": [], "layer_id": layer,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (num_blocks + 1 - layer)})
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_finetune_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                             betas: tuple[float, float] = (0.9, 0.999),
                             encoder_name: str = "encoder") -> torch.optim.AdamW:
    """AdamW over `param_groups_layer_decay`; each group starts at lr x lr_scale (base_lr = lr)."""
    groups = param_groups_layer_decay(model, weight_decay, layer_decay, encoder_name)
    for group in groups:
        group["base_lr"] = lr
        group["lr"] = lr * group["lr_scale"]
    return adamw(groups, lr, betas)
