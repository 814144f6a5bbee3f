"""The one encoder builder (pipeline/models/build.py) every verb calls: the `model` section, from
scratch or from model.pretrained, with model.grad_checkpointing really checkpointing.

    python -m pytest -q tests/models/test_models_build.py
"""

from __future__ import annotations

import pytest
import torch

from pipeline.cli import main
from pipeline.config import ConfigError, ModelConfig, PretrainConfig, load_config
from pipeline.data.masking import tube_mask
from pipeline.models import create_model
from pipeline.models.build import build_encoder, load_encoder
from pipeline.models.checkpoint import save_backbone
from pipeline.tasks.heads import LinearHead, TaskModel
from pipeline.train.build import build_objective, recorded_config
from pipeline.testing import tiny_train

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [2, 8, 8]}


def test_model_section_builds_encoders_with_one_line_errors(tmp_path):
    cfg = load_config(PretrainConfig, None, ["model.name=vit_tiny_sparse", "model.grad_checkpointing=true",
                                             "model.overrides={depth: 1, embed_dim: 32, num_heads: 2}"])
    model = build_encoder(cfg.model, num_frames=8, img_size=32)
    assert model.attention == "sparse" and model.grad_checkpointing and len(model.blocks) == 1
    assert (model.num_frames, model.img_size) == (8, 32)
    save_backbone(model, tmp_path / "b")
    again = build_encoder(ModelConfig(pretrained=str(tmp_path / "b"), overrides={"num_frames": 4}), 8, 32)
    assert again.attention == "sparse" and again.num_frames == 4 and not again.grad_checkpointing
    with pytest.raises(ConfigError, match="model.name: unknown model 'vit_tiny_rope'"):
        build_encoder(ModelConfig(name="vit_tiny_rope"), 8, 32)
    with pytest.raises(ConfigError, match="model: cannot build 'vit_tiny_joint' .*: window: applies to sparse attention only"):
        build_encoder(ModelConfig(overrides={"window": [2, 2, 2]}), 8, 32)
    with pytest.raises(ConfigError, match=r"img_size data.crop_size\): input 8x30x30 is not divisible"):
        build_encoder(ModelConfig(), 8, 30)
    with pytest.raises(ConfigError, match="model.pretrained: no such file or folder"):
        load_config(PretrainConfig, None, [f"model.pretrained={tmp_path / 'nothing'}"])
    with pytest.raises(ConfigError, match="train.grad_checkpointing: unknown key"):
        load_config(PretrainConfig, None, ["train.grad_checkpointing=true"])
    (tmp_path / "b" / "backbone.json").write_text("{}")
    with pytest.raises(ConfigError, match="model.pretrained: .*not a vssl-backbone v1 file"):
        build_encoder(ModelConfig(pretrained=str(tmp_path / "b")), 8, 32)


def _blocks(encoder) -> list[torch.nn.Module]:
    return list(encoder.blocks) if hasattr(encoder, "blocks") else [b for stage in encoder.stages for b in stage]


def _block_runs(model: torch.nn.Module, encoder, step) -> tuple[int, int]:
    """(block forwards started during the forward, and during the backward) of one step; a pre-hook,
    as checkpoint's recomputation stops once it has what the backward needs."""
    calls = []
    hooks = [block.register_forward_pre_hook(lambda *_: calls.append(1)) for block in _blocks(encoder)]
    loss = step(model)
    forward = len(calls)
    loss.backward()
    for hook in hooks:
        hook.remove()
    return forward, len(calls) - forward


@pytest.mark.parametrize("name,overrides,size", [("vit_tiny_joint", TINY, 32), ("mvit_tiny", {}, 64)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_grad_checkpointing_recomputes_every_block_in_the_backward(name, overrides, size, checkpointing):
    """model.grad_checkpointing: each block runs again in the backward (torch.utils.checkpoint
    recomputes its activations) in pretraining and fine-tuning; without it, never."""
    cfg = load_config(PretrainConfig, None, [
        f"model.name={name}", f"model.overrides={overrides}", f"model.grad_checkpointing={str(checkpointing).lower()}",
        "data.num_frames=8", f"data.crop_size={size}",
        "objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2"])
    objective = build_objective(cfg).train()
    grid = objective.encoder.token_grid(8, size, size)
    batch = {"video": torch.randn(2, 3, 8, size, size), "mask": tube_mask(2, grid, 0.75, torch.Generator())}
    depth = len(_blocks(objective.encoder))
    runs = _block_runs(objective, objective.encoder, lambda m: m(batch)[0])
    assert runs == (depth, depth if checkpointing else 0)

    encoder = build_encoder(cfg.model, 8, size)  # as `vssl finetune` builds it
    task = TaskModel(encoder, LinearHead(encoder.num_features, 3), freeze_encoder=False).train()
    runs = _block_runs(task, encoder, lambda m: m(batch["video"]).sum())
    assert runs == (depth, depth if checkpointing else 0)


def test_pretrain_starts_from_model_pretrained_and_records_its_architecture(tmp_path):
    """`vssl pretrain` with model.pretrained (a backbone folder: ours, or a converted VideoMAE)
    starts from its weights, whatever model.name/overrides say, and its checkpoints rebuild
    that architecture for `vssl finetune --init`."""
    torch.manual_seed(1)
    source = create_model("vit_tiny_joint", num_frames=8, img_size=32, pos_embed="learned", **{**TINY, "depth": 2})
    save_backbone(source, tmp_path / "backbone")
    recipe = tiny_train.tiny_recipe(tmp_path / "r.yaml", tiny_train.tiny_shards(tmp_path / "shards"),
                                       tmp_path / "run", max_steps=1, checkpoint_every=1)
    overrides = [f"model.pretrained={tmp_path / 'backbone'}", "model.name=vit_small_divided", "model.overrides={}",
                 "train.lr=1e-12"]
    cfg = load_config(PretrainConfig, recipe, overrides)
    recorded = recorded_config(cfg)
    assert recorded.model.overrides == {k: v for k, v in source.config.items() if k != "name"}
    for config in (cfg, recorded):
        start = build_objective(config).encoder.state_dict()
        assert all(torch.equal(start[k], v) for k, v in source.state_dict().items())
    assert main(["pretrain", str(recipe), *[a for o in overrides for a in ("--set", o)]]) == 0
    trained, report = load_encoder(tmp_path / "run")
    assert report.kind == "pretrain checkpoint, step 1" and trained.config == source.config
    for key, value in source.state_dict().items():  # one step at lr 1e-12: still the pretrained weights
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=0, atol=1e-6)
