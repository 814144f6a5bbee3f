"""Layer-wise lr decay parameter groups (pipeline/tasks/layer_decay.py).

    python -m pytest -q tests/tasks/test_tasks_layer_decay.py
"""

import pytest
import torch
from torch import nn

from pipeline.models import create_model
from pipeline.tasks.heads import LinearHead, TaskModel
from pipeline.tasks.layer_decay import build_finetune_optimizer, encoder_layer_ids, param_groups_layer_decay
from pipeline.train.optim import set_lr

TINY = {
    "mvit_tiny": dict(stem_dim=16, drop_path_rate=0.0),
    "swin3d_tiny": dict(stem_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0),
}


def task_model(name, freeze=False):
    encoder = create_model(name, num_frames=8, img_size=64, **TINY[name])
    return TaskModel(encoder, LinearHead(encoder.num_features, 3), freeze_encoder=freeze)


def test_mvit_layer_ids_follow_stages_and_blocks():
    ids, num_blocks = encoder_layer_ids(create_model("mvit_tiny", **TINY["mvit_tiny"]))
    assert num_blocks == 5  # depths 1-1-2-1
    assert ids["mask_token"] == ids["patch_embed.weight"] == 0
    assert ids["stages.0.0.attn.rel_pos_t"] == 1 and ids["stages.1.0.skip_proj.weight"] == 2
    assert ids["stages.2.0.mlp.fc1.weight"] == 3 and ids["stages.2.1.norm1.bias"] == 4
    assert ids["stages.3.0.attn.qkv.weight"] == 5 and ids["norm.weight"] == 6


def test_swin_patch_merging_counts_as_a_block():
    ids, num_blocks = encoder_layer_ids(create_model("swin3d_tiny", **TINY["swin3d_tiny"]))
    assert num_blocks == 2 + 3 * 3  # stage 0: 2 blocks; stages 1-3: merging + 2 blocks
    assert ids["stem_norm.weight"] == 0
    assert ids["stages.1.0.reduction.weight"] == 3 and ids["stages.1.1.attn.qkv.weight"] == 4
    assert ids["norm.bias"] == num_blocks + 1


class ViTLike(nn.Module):
    """The naming of the plain ViT family: embeddings, blocks.N, a norm, temporal_blocks.N, norm."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(4, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3))
        self.spatial_norm = nn.LayerNorm(8)
        self.temporal_blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.norm = nn.LayerNorm(8)


def test_vit_naming_blocks_then_temporal_blocks():
    ids, num_blocks = encoder_layer_ids(ViTLike())
    assert num_blocks == 5
    assert ids["patch_embed.weight"] == ids["pos_embed"] == ids["cls_token"] == 0
    assert [ids[f"blocks.{i}.1.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["spatial_norm.weight"] == ids["temporal_blocks.0.weight"] == 4
    assert ids["temporal_blocks.1.bias"] == 5 and ids["norm.weight"] == 6


@pytest.mark.parametrize("name", ["mvit_tiny", "swin3d_tiny"])
def test_groups_scale_lr_by_depth_and_skip_decay_where_it_belongs(name):
    model = task_model(name)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    _, num_blocks = encoder_layer_ids(model.encoder)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    listed = [n for g in groups for n in g["param_names"]]
    assert sorted(listed) == sorted(named)  # every trainable parameter exactly once
    assert "encoder.mask_token" not in named  # pretraining's, frozen by TaskModel
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["head.fc.weight"]["lr_scale"] == 1.0 and by_name["head.fc.weight"]["weight_decay"] == 0.05
    assert by_name["encoder.norm.weight"]["lr_scale"] == 1.0
    assert by_name["encoder.patch_embed.weight"]["lr_scale"] == 0.5 ** (num_blocks + 1)
    for n in ("encoder.patch_embed.bias", "encoder.norm.weight", "head.fc.bias"):
        assert by_name[n]["weight_decay"] == 0.0, n
    table = next(n for n in named if "rel_pos" in n or "relative_position" in n)
    assert by_name[table]["weight_decay"] == 0.0
    block_weight = next(n for n in named if n.startswith("encoder.stages.0.0.") and named[n].ndim == 2
                        and "rel_pos" not in n and "relative_position" not in n)
    assert by_name[block_weight]["lr_scale"] == 0.5 ** num_blocks and by_name[block_weight]["weight_decay"] == 0.05


def test_optimizer_starts_at_scaled_lr_and_set_lr_keeps_the_ratios():
    model = task_model("mvit_tiny")
    optimizer = build_finetune_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"]) and group["base_lr"] == 1e-3
    set_lr(optimizer, 2e-4)
    assert sorted({round(g["lr"] / g["lr_scale"], 12) for g in optimizer.param_groups}) == [2e-4]
    assert min(g["lr_scale"] for g in optimizer.param_groups) == pytest.approx(0.75 ** 6)


def test_frozen_encoder_leaves_only_the_head():
    groups = param_groups_layer_decay(task_model("mvit_tiny", freeze=True), 0.05, 0.75)
    assert sorted(n for g in groups for n in g["param_names"]) == ["head.fc.bias", "head.fc.weight"]
