"""The `model` config section -> the encoder every verb trains: from scratch or from a checkpoint
of any kind, with gradient checkpointing.

    from pipeline.models.build import build_encoder, load_encoder
    encoder = build_encoder(cfg.model, num_frames=cfg.data.num_frames, img_size=cfg.data.crop_size)
    encoder, report = load_encoder("runs/pretrain/checkpoints/step-000200", {"drop_path_rate": 0.1})
    print("\\n".join(report.lines()))

`build_encoder` is what `vssl pretrain`, `vssl finetune` and `vssl eval` call:
    model.pretrained    `load_encoder(model.pretrained, model.overrides)`: the checkpoint decides
                        the architecture (model.name is not consulted); what it loaded is printed
    otherwise           the registry's model.name at (num_frames, img_size), model.overrides winning
    model.grad_checkpointing   the encoder's blocks recompute their activations in the backward
Errors come back as one-line ConfigErrors naming the key (model.name, model.overrides,
model.pretrained). `recorded_model(cfg, encoder)` is the section a run records: the built
architecture in full, so the run's checkpoints rebuild it from their own metadata.

`load_encoder` reads every kind pipeline/models/checkpoint.py's checkpoint_kind tells apart:
    run folder        a `vssl pretrain` / `vssl finetune` train.output_dir (it has checkpoints/):
                      its latest complete checkpoint (pipeline/train/checkpoint.py)
    step folder       `step-NNNNNN/` with metadata.json: model.safetensors holds the whole
                      objective; the encoder is under `encoder.` (pretrain) or `model.encoder.`
                      (finetune), and its architecture is rebuilt from the config in metadata.json
    anything else     a backbone folder, a Hugging Face VideoMAE / TimeSformer / ViViT folder, an
                      original VideoMAE .pth or a timm ViT: pipeline/models/convert.import_checkpoint
`overrides` (drop_path_rate, num_frames, img_size, ...) rebuild the model and resample learned
positions. Checkpoint keys outside the encoder (decoders, heads, EMA targets) are reported as
unused; a missing encoder key or a shape mismatch raises CheckpointError naming the key, so no
weight silently keeps its fresh init.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, ModelConfig
from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import (CheckpointError, build_model, load_checked, read_safetensors, run_kind,
                                        step_folder)
from pipeline.models.registry import create_model
from pipeline.train import checkpoint as run_checkpoint

ENCODER_PREFIXES = {"pretrain": "encoder.", "finetune": "model.encoder."}


def build_encoder(cfg: ModelConfig, num_frames: int, img_size: int) -> VideoBackbone:
    """The encoder the `model` section describes; (num_frames, img_size) size a fresh one."""
    if cfg.pretrained:
        encoder, report = pretrained_encoder(cfg)
        print("\n".join(report.lines()), flush=True)
    else:
        kwargs = {"num_frames": num_frames, "img_size": img_size, **cfg.overrides}
        try:
            encoder = create_model(cfg.name, **kwargs)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: cannot build {cfg.name!r} with {kwargs} (num_frames is data.num_frames, "
                              f"img_size data.crop_size): {e}") from None
    encoder.set_grad_checkpointing(cfg.grad_checkpointing)
    return encoder


def pretrained_encoder(cfg: ModelConfig) -> tuple[VideoBackbone, EncoderReport]:
    """load_encoder(model.pretrained, model.overrides), its errors as ConfigErrors naming the key."""
    try:
        return load_encoder(cfg.pretrained, cfg.overrides)
    except CheckpointError as e:
        hint = f" (model.overrides {cfg.overrides} apply to its architecture)" if cfg.overrides else ""
        raise ConfigError(f"model.pretrained: {e}{hint}") from None


def recorded_model(cfg: ModelConfig, encoder: VideoBackbone) -> ModelConfig:
    """The section to record for a run of `encoder`: model.name and its full constructor config as
    model.overrides, so the run's checkpoints rebuild the exact architecture from their own
    metadata, also where model.pretrained decided it. Building from it gives the same encoder."""
    config = dict(encoder.config)
    return replace(cfg, name=config.pop("name"), overrides=config)


@dataclass
class EncoderReport:
    source: str
    kind: str
    unused: list[str] = field(default_factory=list)  # checkpoint keys outside the encoder
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"init: {self.source} ({self.kind})"]
        if self.unused:
            shown = ", ".join(self.unused[:6]) + (", ..." if len(self.unused) > 6 else "")
            out.append(f"  unused: {len(self.unused)} key(s) outside the encoder: {shown}")
        return out + [f"  note: {note}" for note in self.notes]


def encoder_arguments(config: dict) -> tuple[str, dict[str, Any]]:
    """(model name, constructor arguments) of the encoder a run's saved config describes: the
    registry model at the run's clip size, with model.overrides winning (as build_encoder builds it)."""
    model, data = config.get("model", {}), config.get("data", {})
    if not model.get("name"):
        raise CheckpointError("metadata.json: config.model.name missing")
    args = {"num_frames": data.get("num_frames", 16), "img_size": data.get("crop_size", 224),
            **model.get("overrides", {})}
    return model["name"], args


def _from_step_folder(folder: Path, overrides: dict[str, Any]) -> tuple[VideoBackbone, EncoderReport]:
    config = run_checkpoint.read_metadata(folder)["config"]
    kind = run_kind(config)
    prefix = ENCODER_PREFIXES[kind]
    name, args = encoder_arguments(config)
    weights = folder / "model.safetensors"
    try:
        with torch.device("meta"):  # only its config is needed: no memory, no init
            source_config = create_model(name, **args).config
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot rebuild the encoder {name!r} ({e.args[0] if e.args else e})") from None
    state = read_safetensors(weights)
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise CheckpointError(f"{weights}: no key starts with {prefix!r} (not a {kind} checkpoint?)")
    model = build_model(source_config, str(folder), **overrides)
    load_checked(model, model.remap_state_dict(encoder_state, source_config), str(weights))
    unused = sorted(k for k in state if not k.startswith(prefix))
    return model, EncoderReport(str(folder), f"{kind} checkpoint, step {int(folder.name.split('-')[-1])}", unused)


def load_encoder(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[VideoBackbone, EncoderReport]:
    """The encoder stored at `path` (any kind above), rebuilt with `overrides`."""
    from pipeline.models.convert import import_checkpoint

    path, overrides = Path(path), dict(overrides or {})
    folder = step_folder(path)
    if folder is not None:
        return _from_step_folder(folder, overrides)
    model, report = import_checkpoint(path, **overrides)
    return model, EncoderReport(str(path), report.format, list(report.unused), list(report.notes))
