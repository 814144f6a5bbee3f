"""The `model` config section -> a backbone: registry or checkpoint, plus gradient checkpointing.

    from pipeline.config import ModelConfig
    from pipeline.models.build import build_backbone
    model = build_backbone(ModelConfig(name="vit_small_joint", overrides={"num_frames": 8}))
    model = build_backbone(ModelConfig(pretrained="runs/x/backbone", grad_checkpointing=True))

Errors come back as ConfigError naming the config key (model.name, model.overrides,
model.pretrained), so `vssl pretrain` prints them as one line.
"""

from __future__ import annotations

from pipeline.config import ConfigError, ModelConfig
from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import CheckpointError, load_backbone
from pipeline.models.registry import create_model


def build_backbone(cfg: ModelConfig) -> VideoBackbone:
    if cfg.pretrained:
        try:
            model = load_backbone(cfg.pretrained, **cfg.overrides)
        except CheckpointError as e:
            raise ConfigError(f"model.pretrained: {e}") from None
    else:
        try:
            model = create_model(cfg.name, **cfg.overrides)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {e}") from None
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model
