"""Typed configs: dataclasses filled from YAML recipes and `--set a.b=c` overrides.

    from pipeline.config import load_config, PretrainConfig
    cfg = load_config(PretrainConfig, "recipes/pretrain/quickstart.yaml", ["train.max_steps=10"])

Every section is a dataclass with defaults, so a recipe states only what differs. An unknown key,
a value of the wrong type or a malformed override raises `ConfigError` with a one-line message
naming the dotted key (and the file it came from). YAML is read with `yaml.safe_load` only.

Subsystems own their section below (data -> DataConfig, model -> ModelConfig, ...); the
machinery at the top of this file is generic and knows nothing about them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override is wrong; the message names the key."""


# ---------------------------------------------------------------------------------------------
# generic machinery


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (valid keys: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config (what a run folder records)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], c) with c parsed as YAML (so 3, 0.5, true, [1, 2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.max_steps=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e.__class__.__name__}")
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `a.b=c` into the nested dict `data` (a copy is returned)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', e)})")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Recipe file (optional) + overrides -> validated config of type `cls`."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


# ---------------------------------------------------------------------------------------------
# sections (each subsystem owns its own; add fields there, with defaults and a validate())


@dataclass
class DataConfig:
    """The streaming clip loader (pipeline/data)."""

    shards: str = ""  # paths, globs, brace patterns, pipe: commands or a manifest.json
    decoder: str = "decord"  # decord | torchcodec | pyav
    num_frames: int = 16
    frame_stride: int = 4
    crop_size: int = 224
    batch_size: int = 8
    num_workers: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    mask_type: str = "tube"  # tube | random | running_cell | multiblock | none
    mask_ratio: float = 0.9

    def validate(self) -> None:
        if self.decoder not in ("decord", "torchcodec", "pyav"):
            raise ConfigError(f"data.decoder: must be decord, torchcodec or pyav, got {self.decoder!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"data.mask_ratio: must be in [0, 1), got {self.mask_ratio}")
        for name in ("num_frames", "frame_stride", "crop_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")


@dataclass
class ModelConfig:
    """A registered backbone plus overrides of its constructor arguments (pipeline/models).

    With `pretrained` (a backbone folder, or any checkpoint `vssl convert` reads) the checkpoint
    decides the architecture and `name` is not consulted; `overrides` still apply (e.g.
    num_frames, which resamples learned positions, or drop_path_rate).
    pipeline.models.build.build_backbone(cfg) turns this section into a model.
    """

    name: str = "vit_tiny_joint"
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""
    grad_checkpointing: bool = False

    def validate(self) -> None:
        if not self.pretrained and not self.name:
            raise ConfigError("model.name: empty (name a registered model, e.g. vit_small_joint)")
        if self.pretrained and not Path(self.pretrained).exists():
            raise ConfigError(f"model.pretrained: no such file or folder: {self.pretrained}")


@dataclass
class ShardConfig:
    """`vssl shard`: raw video -> WebDataset shards (data_prep)."""

    shard_size_mb: float = 256.0
    max_samples_per_shard: int = 1000
    workers: int = 2
    transcode: bool = False
    short_side: int = 0  # 0 keeps the size
    fps: float = 0.0  # 0 keeps the rate
    gop: int = 16
    crf: int = 23
    timeout_s: float = 60.0  # bound on the time spent on one input


@dataclass
class TrainConfig:
    """The trainer (pipeline/train)."""

    output_dir: str = "runs/pretrain"
    max_steps: int = 100
    seed: int = 0


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
