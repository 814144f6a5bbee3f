"""Where a fine-tune's encoder comes from: a checkpoint of any supported kind, or a fresh one.

    vssl finetune recipes/finetune/classification.yaml --init runs/pretrain     # sets model.pretrained
    from pipeline.tasks.encoder_init import load_encoder
    encoder, report = load_encoder("runs/pretrain/checkpoints/step-000200", {"drop_path_rate": 0.1})
    print("\\n".join(report.lines()))

Kinds, told apart by what the path holds:
    run folder        a `vssl pretrain` / `vssl finetune` train.output_dir (it has checkpoints/):
                      its latest complete checkpoint (pipeline/train/checkpoint.py)
    step folder       `step-NNNNNN/` with metadata.json: model.safetensors holds the whole
                      objective; the encoder is under `encoder.` (pretrain) or `model.encoder.`
                      (finetune), and its architecture is rebuilt from the config in metadata.json
    anything else     a backbone folder, a Hugging Face VideoMAE / TimeSformer / ViViT folder, an
                      original VideoMAE .pth or a timm ViT: pipeline/models/checkpoint.load_backbone
`overrides` (model.overrides: drop_path_rate, num_frames, img_size, ...) rebuild the model and
resample learned positions. Checkpoint keys outside the encoder (decoders, heads, EMA targets)
are reported as unused; a missing encoder key or a shape mismatch raises CheckpointError naming
the key, so no weight silently keeps its fresh init.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import CheckpointError, build_model, load_checked, read_safetensors
from pipeline.models.registry import create_model
from pipeline.train import checkpoint as run_checkpoint

ENCODER_PREFIXES = {"pretrain": "encoder.", "finetune": "model.encoder."}


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


def step_folder(path: str | Path) -> Path | None:
    """The checkpoint a run or step folder stands for; None when `path` is neither."""
    path = Path(path)
    if (path / run_checkpoint.METADATA).is_file():
        if run_checkpoint.read_metadata(path) is None:
            raise CheckpointError(f"{path}: incomplete checkpoint (a file is missing or has the wrong size)")
        return path
    if (path / "checkpoints").is_dir():
        latest = run_checkpoint.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{path / 'checkpoints'}: no complete checkpoint")
        return latest
    return None


def run_kind(config: dict) -> str:
    """"pretrain" or "finetune", from the sections of a checkpoint's saved config."""
    return "finetune" if "task" in config else "pretrain"


def encoder_arguments(config: dict) -> tuple[str, dict[str, Any]]:
    """(model name, constructor arguments) of the encoder a run's saved config describes: the
    registry model at the run's clip size, with model.overrides winning (as pretrain builds it)."""
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
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    folder = step_folder(path)
    if folder is not None:
        return _from_step_folder(folder, overrides)
    model, report = import_checkpoint(path, **overrides)
    return model, EncoderReport(str(path), report.format, list(report.unused), list(report.notes))
