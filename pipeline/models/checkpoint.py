"""Backbone weights on disk: our own folders, plus loading any supported checkpoint by path.

    from pipeline.models.checkpoint import save_backbone, load_backbone
    save_backbone(model, "runs/x/backbone")     # backbone.safetensors, then backbone.json (last)
    model = load_backbone("runs/x/backbone")     # also: HF VideoMAE / TimeSformer / ViViT folders,
                                                # original VideoMAE .pth, timm ViT (inflated)
    model = load_backbone(path, num_frames=32)  # rebuilt for another clip length (positions resampled)

Folder layout, format "vssl-backbone" version 1:

    backbone.safetensors   the state dict (safetensors; never pickle)
    backbone.json          {"format": "vssl-backbone", "version": 1, "config": model.config,
                            "weights_bytes": size of backbone.safetensors}

backbone.json is written last (temporary file + rename) and an old one is removed before the
weights are replaced, so a folder holding backbone.json is complete; the recorded size catches a
truncated weights file. Foreign layouts go through pipeline/models/convert.py, which reports
unused and missing keys. Every error is a one-line `CheckpointError` naming the path and key.

`checkpoint_kind(path)` is the one place that tells what a path holds (a run, a step folder, a
backbone folder, a Hugging Face folder, a state-dict file); `step_folder` and `run_kind` read a
run's own checkpoints (pipeline/train/checkpoint.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.durable import atomic_write
from pipeline.models.base import VideoBackbone
from pipeline.models.registry import create_model
from pipeline.train import checkpoint as run_checkpoint
from pipeline.train.checkpoint import CheckpointError

FORMAT_NAME = "vssl-backbone"
FORMAT_VERSION = 1
WEIGHTS_NAME = "backbone.safetensors"
META_NAME = "backbone.json"

CheckpointKind = Literal["step", "run", "backbone", "hugging-face", "state-dict"]


def save_backbone(model: VideoBackbone, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_NAME).unlink(missing_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": model.config,
            "weights_bytes": weights.stat().st_size}
    atomic_write(folder / META_NAME, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return folder


def checkpoint_kind(path: str | Path) -> CheckpointKind:
    """What `path` holds, from its files:
        step           a run's checkpoint folder `step-NNNNNN/` (it has metadata.json)
        run            a `vssl pretrain` / `vssl finetune` train.output_dir (it has checkpoints/)
        backbone       our backbone folder (backbone.json)
        hugging-face   any other folder (pipeline/models/convert_hf.py says what it lacks)
        state-dict     a file: an original VideoMAE .pth or a timm ViT (convert_pth.py)
    A path that does not exist is a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if (path / run_checkpoint.METADATA).is_file():
        return "step"
    if (path / "checkpoints").is_dir():
        return "run"
    if (path / META_NAME).is_file():
        return "backbone"
    return "hugging-face" if path.is_dir() else "state-dict"


def step_folder(path: str | Path) -> Path | None:
    """The complete checkpoint a run or step folder stands for; None for any other kind."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "step":
        if run_checkpoint.read_metadata(path) is None:
            raise CheckpointError(f"{path}: incomplete checkpoint (a file is missing or has the wrong size)")
        return path
    if kind == "run":
        latest = run_checkpoint.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{path / 'checkpoints'}: no complete checkpoint")
        return latest
    return None


def run_kind(config: dict) -> str:
    """"pretrain" or "finetune", from the sections of a run checkpoint's saved config."""
    return "finetune" if "task" in config else "pretrain"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0]})") from None


def build_model(config: dict, origin: str, **overrides) -> VideoBackbone:
    """create_model(config["name"], **rest, **overrides), with bad configs as CheckpointError."""
    args = {k: v for k, v in {**config, **overrides}.items() if k != "name"}
    try:
        return create_model(config["name"], **args)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{origin}: cannot build the model ({e.args[0] if e.args else e})") from None


def load_checked(model: nn.Module, state: dict[str, Tensor], origin: str,
                 sources: dict[str, str] | None = None) -> None:
    """Load `state` into `model` after checking that keys and shapes match exactly.

    `sources` maps a model key to the checkpoint key(s) it came from, for the error message.
    """
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise CheckpointError(f"{origin}: {len(unexpected)} key(s) the model does not have, e.g. {unexpected[:3]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            came_from = f" (from {sources[key]})" if sources and key in sources else ""
            raise CheckpointError(f"{origin}: shape mismatch for {key}{came_from}: checkpoint "
                                  f"{tuple(value.shape)} vs model {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{origin}: {len(missing)} model key(s) missing from the checkpoint, e.g. {missing[:3]}")
    model.load_state_dict(state)


def load_backbone(path: str | Path, **overrides) -> VideoBackbone:
    """Our folder, or any layout pipeline/models/convert.py imports; overrides rebuild the model."""
    path = Path(path)
    if checkpoint_kind(path) != "backbone":
        from pipeline.models.convert import import_checkpoint

        return import_checkpoint(path, **overrides)[0]
    meta = read_json(path / META_NAME)
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / META_NAME}: not a {FORMAT_NAME} v{FORMAT_VERSION} file "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    if not isinstance(meta.get("config"), dict) or "name" not in meta["config"]:
        raise CheckpointError(f"{path / META_NAME}: config: expected an object with the model name")
    weights = path / WEIGHTS_NAME
    if not weights.is_file() or weights.stat().st_size != meta.get("weights_bytes"):
        size = weights.stat().st_size if weights.is_file() else "absent"
        raise CheckpointError(f"{weights}: incomplete weights (size {size}, "
                              f"backbone.json says {meta.get('weights_bytes')})")
    model = build_model(meta["config"], str(path), **overrides)
    state = model.remap_state_dict(read_safetensors(weights), meta["config"])
    load_checked(model, state, str(weights))
    return model
