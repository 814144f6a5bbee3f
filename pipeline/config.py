"""Typed configs: dataclasses filled from YAML recipes and `--set a.b=c` overrides.

    from pipeline.config import load_config, PretrainConfig
    cfg = load_config(PretrainConfig, "recipes/pretrain/quickstart.yaml", ["train.max_steps=10"])

Every section is a dataclass with defaults, so a recipe states only what differs. An unknown key,
a value of the wrong type or a malformed override raises `ConfigError` with a one-line message
naming the dotted key (and the file it came from); a key a section lists in its REMOVED table is
refused naming its replacement. YAML is read with `yaml.safe_load` only.

A choice field is typed with a `Literal` alias defined beside its section (`MaskType`,
`Decoder`, ...): that alias is the one list of allowed values; the module that acts on the
choice imports it (`typing.get_args(MaskType)`) rather than keeping its own. They live here, not
in those modules, so that reading a config imports neither torch nor any model code.

Subsystems own their section below (data -> DataConfig, model -> ModelConfig, ...); the
machinery at the top of this file is generic and knows nothing about them.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from pipeline.recipe_files import recipe_path

T = TypeVar("T")


_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


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
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]  # the first alternative's words: a Literal's names its choices
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}, got {value!r}")
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
        if isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
            return float(value)  # YAML 1.1 reads 3e-3 (no dot) as a string
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
    removed = getattr(cls, "REMOVED", {})
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            if k in removed:
                raise ConfigError(f"{where}: removed; {removed[k]}")
            raise ConfigError(f"{where}: unknown key (valid keys: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _holds_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal or any(_holds_literal(arg) for arg in typing.get_args(tp))


def check_choices(section: Any, prefix: str) -> None:
    """Refuse a choice field (typed with a Literal) holding another value: from_dict refuses it on
    reading; this catches a section built in code, so each section's validate() calls it first."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        if _holds_literal(hints[f.name]):
            _coerce(getattr(section, f.name), hints[f.name], f"{prefix}.{f.name}")


def without_removed(cls: type, data: dict) -> dict:
    """A recorded config (a checkpoint's metadata) without the keys its sections have since removed,
    so older runs still load; recipes and overrides that set them are refused instead."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in data.items():
        if k in getattr(cls, "REMOVED", {}):
            continue
        tp = hints.get(k)
        out[k] = without_removed(tp, v) if dataclasses.is_dataclass(tp) and isinstance(v, dict) else v
    return out


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
    """A recipe file's mapping; `path` may also name a shipped recipe (pipeline/recipe_files.py)."""
    path = recipe_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found (nor a shipped one, named as under recipes/: "
                          f"pretrain/quickstart.yaml)")
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
class DataSource:
    """One dataset of a weighted mix (data.sources)."""

    shards: str = ""  # as data.shards
    weight: float = 1.0  # resampled: share of samples; otherwise passes over it per epoch
    manifest: str = ""  # as data.manifest
    # this source's clips take every frame_stride-th frame (sampling random; 0 = data.frame_stride):
    # sources of other frame rates or motion speeds cover comparable time spans, as V-JEPA 2 mixes them
    frame_stride: int = 0


def _range(key: str, pair: tuple[float, float], low: float, high: float) -> None:
    if not low <= pair[0] <= pair[1] <= high:
        raise ConfigError(f"{key}: need {low} <= min <= max <= {high}, got {list(pair)}")


Decoder = Literal["decord", "torchcodec", "pyav"]  # pipeline/data/decode.py
DecodeDevice = Literal["cpu", "cuda"]  # pipeline/data/decode.py (cuda: torchcodec's NVDEC; see loader.py)
Sampling = Literal["random", "segment", "fps"]  # pipeline/data/sampling.py
Crop = Literal["multiscale", "random_resized", "center"]  # pipeline/data/transforms.py
MaskType = Literal["tube", "random", "running_cell", "multiblock", "none"]  # pipeline/data/masking.py


@dataclass
class DataConfig:
    """The streaming clip loader (pipeline/data; entry point pipeline.data.build_loader)."""

    REMOVED: ClassVar[dict[str, str]] = dict.fromkeys(  # key -> what replaces it
        ("decoder_mask_type", "decoder_mask_ratio"),
        "set objective.decoder_mask_ratio (VideoMAE makes its own running-cell decoder mask)")

    # what to read: paths, globs, brace patterns, pipe: commands or a manifest.json (or its
    # folder); several joined with "::". Counts come from a manifest (found beside local shards,
    # or named in `manifest` for pipe:/URL shards), else from a scan of local tar headers.
    shards: str = ""
    manifest: str = ""
    sources: list[DataSource] = field(default_factory=list)  # a weighted mix instead of `shards`
    # object storage (pipeline/storage.py): shards and manifests may be s3:// / gs:// / https:// URLs
    storage_endpoint: str = ""  # S3-compatible endpoint; "" = AWS_ENDPOINT_URL, else AWS
    cache_dir: str = ""  # keep streamed shards here ("" = no cache); shared safely by workers and ranks
    cache_size_gb: float = 100.0  # the cache's limit: least recently used shards are deleted beyond it
    # decoding
    decoder: Decoder = "decord"
    decode_timeout_s: float = 30.0  # > 0: decode in a killable helper; 0: in the worker, unbounded
    decode_device: DecodeDevice = "cpu"  # cuda: torchcodec on the GPU, in the loader's process (needs timeout 0)
    # clip sampling
    sampling: Sampling = "random"
    num_frames: int = 16
    frame_stride: int = 4
    target_fps: float = 0.0  # sampling=fps
    repeated_samples: int = 1  # k clips (each its own augmentation) per decoded video
    eval_clips: int = 1  # evaluation: temporal views per video
    eval_crops: int = 1  # evaluation: spatial views per clip (1 centre, 3 along the long side)
    # spatial transforms
    crop: Crop = "multiscale"
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random_resized area fraction
    flip_prob: float = 0.5
    rand_augment_ops: int = 0  # 0 = off
    rand_augment_magnitude: int = 9
    # timm.data.IMAGENET_DEFAULT_MEAN / _STD, spelled out so that reading a config imports no torch
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # batching, order and epochs
    batch_size: int = 8
    num_workers: int = 2
    streams_per_rank: int = 0  # 0 = max(1, num_workers); set it to resume with another worker count
    prefetch_factor: int = 2  # batches in flight per worker
    shuffle: bool = True
    shuffle_buffer: int = 256  # samples held per rank, shared by its streams
    drop_last: bool = True  # False: the last batches wrap around to the epoch's first samples
    resampled: bool = False  # draw shards with replacement; epochs of epoch_samples
    epoch_samples: int = 0  # resampled epoch length over all ranks; 0 = the sources' total
    seed: int = 0
    # masks returned with the batch
    mask_type: MaskType = "tube"
    mask_ratio: float = 0.9
    mask_block_scale: tuple[float, float] = (0.15, 0.2)  # multiblock: area fraction per block
    mask_block_aspect: tuple[float, float] = (0.75, 1.5)

    def validate(self) -> None:
        check_choices(self, "data")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"data.mask_ratio: must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ConfigError(f"data.flip_prob: must be in [0, 1], got {self.flip_prob}")
        for name in ("num_frames", "frame_stride", "crop_size", "batch_size", "repeated_samples",
                     "eval_clips", "eval_crops", "shuffle_buffer", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "streams_per_rank", "epoch_samples", "rand_augment_ops",
                     "rand_augment_magnitude"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: must be >= 0, got {getattr(self, name)}")
        if self.decode_timeout_s < 0:
            raise ConfigError(f"data.decode_timeout_s: must be >= 0, got {self.decode_timeout_s}")
        if self.decode_device == "cuda" and self.decoder != "torchcodec":
            raise ConfigError(f"data.decode_device: cuda decodes with torchcodec only (NVDEC), not {self.decoder}; "
                              f"set data.decoder=torchcodec or data.decode_device=cpu")
        if self.decode_device == "cuda" and self.decode_timeout_s > 0:
            raise ConfigError(f"data.decode_timeout_s: {self.decode_timeout_s:g}, but decode_device cuda decodes in the "
                              f"loader's own process, where no timeout can stop a decode; set data.decode_timeout_s=0")
        if self.cache_size_gb <= 0:
            raise ConfigError(f"data.cache_size_gb: must be > 0, got {self.cache_size_gb}")
        if self.sampling == "fps" and self.target_fps <= 0:
            raise ConfigError("data.target_fps: sampling 'fps' needs target_fps > 0")
        if self.streams_per_rank and self.num_workers and self.streams_per_rank % self.num_workers:
            raise ConfigError(f"data.num_workers: {self.num_workers} must divide "
                              f"data.streams_per_rank {self.streams_per_rank}")
        _range("data.crop_scale", self.crop_scale, 1e-6, 1.0)
        _range("data.mask_block_scale", self.mask_block_scale, 1e-6, 1.0)
        _range("data.mask_block_aspect", self.mask_block_aspect, 1e-6, 1e6)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"data.std: must be > 0, got {list(self.std)}")
        if self.sources and (self.shards or self.manifest):
            raise ConfigError("data.sources: give either data.sources or data.shards/data.manifest, not both")
        for i, src in enumerate(self.sources):
            if not src.shards:
                raise ConfigError(f"data.sources[{i}].shards: must not be empty")
            if src.weight <= 0:
                raise ConfigError(f"data.sources[{i}].weight: must be > 0, got {src.weight}")
            if src.frame_stride < 0:
                raise ConfigError(f"data.sources[{i}].frame_stride: must be >= 1 (0 = data.frame_stride), "
                                  f"got {src.frame_stride}")
            if src.frame_stride and self.sampling != "random":
                raise ConfigError(f"data.sources[{i}].frame_stride: only sampling 'random' steps by frames "
                                  f"(data.sampling is {self.sampling!r})")

    def data_sources(self) -> list[DataSource]:
        """The mix to read: data.sources, or data.shards as a single source of weight 1."""
        if self.sources:
            return list(self.sources)
        if not self.shards:
            raise ConfigError("data.shards: no shards given (paths, globs, pipe: commands or a manifest.json)")
        return [DataSource(shards=self.shards, weight=1.0, manifest=self.manifest)]

    def source_strides(self) -> tuple[int, ...]:
        """The frame step of each source of data_sources(): its own, else data.frame_stride."""
        return tuple(src.frame_stride or self.frame_stride for src in self.data_sources())


@dataclass
class ModelConfig:
    """A registered backbone plus overrides of its constructor arguments (pipeline/models).

    With `pretrained` (a backbone folder, or any checkpoint `vssl convert` reads) the checkpoint
    decides the architecture and `name` is not consulted; `overrides` still apply (e.g.
    num_frames, which resamples learned positions, or drop_path_rate).
    pipeline.models.build.build_encoder(cfg, num_frames, img_size) turns this section into a model.
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


ShardBackend = Literal["local", "ray"]  # data_prep: where the per-input work runs (the output is the same)
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


@dataclass
class ShardConfig:
    """`vssl shard`: raw video -> WebDataset shards (data_prep)."""

    inputs_per_shard: int = 256  # each split's inputs, in listing order, make shards of this many (data_prep/plan.py)
    workers: int = 2  # worker processes (with backend ray: Ray tasks at once); the output does not depend on it
    backend: ShardBackend = "local"  # "local" processes or "ray" tasks
    ray_address: str = ""  # backend ray: the cluster to join ("auto", "HOST:PORT", "ray://..."); "" starts a local one
    transcode: bool = False  # re-encode to H.264 with the settings below (else keep the bytes)
    short_side: int = 0  # 0 keeps the size; needs transcode
    fps: float = 0.0  # 0 keeps the rate; needs transcode
    gop: int = 16  # keyframe interval of re-encoded video
    crf: int = 23
    preset: X264Preset = "veryfast"  # x264 speed/size trade-off
    segment_s: float = 0.0  # > 0: cut each clip into consecutive segments of this many seconds
    timeout_s: float = 60.0  # bound on the time spent on one input

    def validate(self) -> None:
        check_choices(self, "shard")
        positive = {"inputs_per_shard": self.inputs_per_shard, "workers": self.workers, "gop": self.gop,
                    "timeout_s": self.timeout_s}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"shard.{name}: must be > 0, got {value}")
        for name in ("short_side", "fps", "segment_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"shard.{name}: must be >= 0, got {getattr(self, name)}")
        if self.short_side % 2:
            raise ConfigError(f"shard.short_side: must be even (H.264 yuv420p), got {self.short_side}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"shard.crf: must be in [0, 51], got {self.crf}")
        for name in ("short_side", "fps"):
            if getattr(self, name) and not self.transcode:
                raise ConfigError(f"shard.{name}: set shard.transcode=true (--transcode) to change it")
        if self.ray_address and self.backend != "ray":
            raise ConfigError("shard.ray_address: set shard.backend=ray (--backend ray) to use it")


ObjectiveName = Literal["videomae", "predictive"]  # pipeline/train/build.py: build_objective
# pixels | frame_diff: reconstruct/predict x_t - x_(t-1) (motion), as MotionMAE/MME do |
# motion_energy: |x_t - x_(t-1)|, where and how much the clip changes, not the sign
Target = Literal["pixels", "frame_diff", "motion_energy"]  # pipeline/objectives/common.py: target_video
GuidedMasking = Literal["none", "motion"]  # pipeline/objectives/guided_masking.py
# layer: each token over channels | instance: each channel over the clip's tokens
LatentNorm = Literal["layer", "instance"]  # pipeline/objectives/common.py: normalize_latents


@dataclass
class ObjectiveConfig:
    """The self-supervised objective (pipeline/objectives)."""

    name: ObjectiveName = "videomae"
    # VideoMAE
    decoder_dim: int = 192
    decoder_depth: int = 4
    decoder_heads: int = 3
    norm_pix_loss: bool = True
    target: Target = "pixels"
    decoder_mask_ratio: float = 0.0  # >0: running-cell decoder masking (VideoMAE v2)
    guided_masking: GuidedMasking = "none"  # motion: keep high-motion tubes visible
    guide_strength: float = 2.0
    # videomae: also learn a log precision per reconstructed token and take the Gaussian NLL of
    # its error (the predictive objective always does; bounds below)
    precision_weighted: bool = False
    # both: also regress an EMA target encoder's tokens of the unmasked clip, normalised per latent_norm
    latent_target: bool = False
    latent_norm: LatentNorm = "layer"
    ema_momentum: float = 0.996
    latent_weight: float = 1.0
    # next-frame predictive
    predict_steps: int = 1  # tubelet time steps predicted after the context
    # both (videomae with precision_weighted): bounds of the learned log precision
    log_precision_min: float = -6.0
    log_precision_max: float = 6.0

    def validate(self) -> None:
        check_choices(self, "objective")
        if not 0.0 <= self.decoder_mask_ratio < 1.0:
            raise ConfigError(f"objective.decoder_mask_ratio: must be in [0, 1), got {self.decoder_mask_ratio}")
        if self.predict_steps < 1:
            raise ConfigError(f"objective.predict_steps: must be >= 1, got {self.predict_steps}")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError(f"objective.ema_momentum: must be in [0, 1], got {self.ema_momentum}")
        if self.log_precision_min >= self.log_precision_max:
            raise ConfigError("objective.log_precision_min: must be below log_precision_max")
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(f"objective.decoder_dim: {self.decoder_dim} not divisible by decoder_heads")


Tracker = Literal["tensorboard", "wandb", "mlflow"]  # pipeline/train/trackers.py
Device = Literal["auto", "cuda", "cpu"]  # pipeline/train/engine.py: a GPU meant and missing is an error
# auto: the launcher's --mixed_precision if given, else bf16 on a GPU, fp32 on the CPU
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]  # pipeline/train/engine.py
CompileBackend = Literal["inductor", "aot_eager"]  # torch.compile: aot_eager captures graphs, no codegen


@dataclass
class TrainConfig:
    """The trainer (pipeline/train)."""

    output_dir: str = "runs/pretrain"
    max_steps: int = 100
    seed: int = 0
    lr: float = 1.5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables
    grad_accum: int = 1
    device: Device = "auto"
    mixed_precision: MixedPrecision | bool = "auto"  # YAML reads a bare `no` as false: that means "no"
    compile: bool = False
    compile_backend: CompileBackend = "inductor"
    checkpoint_every: int = 50
    keep_last: int = 3
    log_every: int = 1
    image_every: int = 50
    max_nonfinite_retries: int = 3
    resume: str = "auto"  # auto: latest complete checkpoint in output_dir | never | a folder
    dist_timeout_s: float = 600.0
    peak_tflops: float = 0.0  # the device's dense bf16 peak for MFU; 0: from the GPU's name where known
    report_to: list[Tracker] = field(default_factory=lambda: ["tensorboard"])
    # representation monitors (pipeline/train/online_eval.py): k-NN top-1 and collapse figures
    eval_every: int = 0  # steps; 0 = off
    eval_videos: int = 128  # the first this many videos of eval_split, one view each
    eval_split: str = "val"  # the train split when the shards have none of this name

    def validate(self) -> None:
        check_choices(self, "train")
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        if self.mixed_precision is True:
            choices = ", ".join(typing.get_args(MixedPrecision))
            raise ConfigError(f"train.mixed_precision: must be one of {choices}, got True")
        if self.eval_every < 0 or self.eval_videos < 4:
            raise ConfigError(f"train.eval_every: must be >= 0 and train.eval_videos >= 4, got {self.eval_every} "
                              f"and {self.eval_videos}")
        if self.compile_backend != "inductor" and not self.compile:
            raise ConfigError("train.compile_backend: set train.compile=true to use it")
        if self.peak_tflops < 0:
            raise ConfigError(f"train.peak_tflops: must be >= 0, got {self.peak_tflops}")
        for name in ("max_steps", "grad_accum", "checkpoint_every", "log_every", "image_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.max_nonfinite_retries < 0:
            raise ConfigError(f"train.max_nonfinite_retries: must be >= 0, got {self.max_nonfinite_retries}")


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# task.kind -> the heads it takes (task.head), its first the default: the one list of task kinds, each
# a module pipeline/tasks/<kind>.py (its build_head; pipeline/tasks/kinds.py says what else it holds)
TASK_HEADS = {"classification": ("linear", "attentive"), "segmentation": ("linear", "decoder"),
              "tracking": ("correlation",), "propagation": ("none",)}
TaskKind = Literal[tuple(TASK_HEADS)]
HeadNorm = Literal["layer", "batch", "none"]  # pipeline/tasks/heads.py: LinearHead


@dataclass
class TaskConfig:
    """The downstream task of `vssl finetune` / `vssl eval` (pipeline/tasks)."""

    kind: TaskKind = "classification"
    head: str = ""  # one of TASK_HEADS[kind]; "": the kind's first
    freeze_encoder: bool = False  # true: linear / attentive probe over a frozen encoder
    num_classes: int = 0  # 0: the manifest's classes (classification), 2 (segmentation)
    label_fraction: float = 1.0  # < 1: train on a class-balanced subset of the labelled samples
    label_seed: int = 0  # picks which subset (by sample key hash)
    layer_decay: float = 1.0  # lr x layer_decay ** (depth + 1 - layer); 1 = off
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # > 0: mixup with lam ~ Beta(alpha, alpha)
    cutmix_alpha: float = 0.0  # > 0: cutmix, one box over every frame of the clip
    mix_prob: float = 1.0  # chance that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both alphas: chance of cutmix instead of mixup
    head_dropout: float = 0.0
    head_norm: HeadNorm = "layer"  # classification linear head
    head_width: int = 64  # tracking: correlation channels
    template_size: int = 32  # tracking: template crop side in pixels (a multiple of the stride)
    template_context: float = 2.0  # tracking: crop side / longer box side
    davis_root: str = ""  # propagation: a DAVIS-2017 layout folder
    davis_split: str = "val"
    propagation_context: int = 7  # propagation: previous frames used as sources
    propagation_topk: int = 5
    propagation_temperature: float = 0.07
    propagation_radius: int = 12  # grid cells; < 0 = no limit
    propagation_scale: int = 1  # frames enlarged this many times before encoding (small videos)
    eval_split: str = "val"
    pictures: int = 4  # evaluation: overlay pictures written

    def validate(self) -> None:
        check_choices(self, "task")
        self.head = self.head or TASK_HEADS[self.kind][0]
        if self.head not in TASK_HEADS[self.kind]:
            raise ConfigError(f"task.head: must be one of {', '.join(TASK_HEADS[self.kind])}, got {self.head!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"task.label_fraction: must be in (0, 1], got {self.label_fraction}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"task.layer_decay: must be in (0, 1], got {self.layer_decay}")
        for name in ("label_smoothing", "mix_prob", "mix_switch_prob", "head_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"task.{name}: must be in [0, 1], got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha", "num_classes", "pictures", "propagation_context"):
            if getattr(self, name) < 0:
                raise ConfigError(f"task.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("head_width", "template_size", "propagation_topk", "propagation_scale"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name}: must be >= 1, got {getattr(self, name)}")
        if self.template_context <= 0 or self.propagation_temperature <= 0:
            raise ConfigError("task.template_context, task.propagation_temperature: must be > 0")
        if self.kind == "propagation" and not self.davis_root:
            raise ConfigError("task.davis_root: propagation needs a DAVIS-layout folder")
        if self.kind == "segmentation" and self.num_classes == 1:
            raise ConfigError("task.num_classes: segmentation needs >= 2 (background + objects)")


@dataclass
class FinetuneConfig:
    """`vssl finetune` / `vssl eval`: the trainer (data, train) plus a backbone and a task."""

    data: DataConfig = field(default_factory=DataConfig)  # recipes set mask_type: none
    model: ModelConfig = field(default_factory=ModelConfig)  # model.pretrained: what --init sets
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.task.kind == "classification" and self.task.head == "linear" and self.task.head_norm == "batch" \
                and self.data.batch_size < 2:
            raise ConfigError(f"task.head_norm: batch needs data.batch_size >= 2 per process, got {self.data.batch_size}")


ProbeMethod = Literal["knn", "linear", "attentive"]  # pipeline/probe/run.py


@dataclass
class ProbeSettings:
    """Frozen evaluation (`vssl probe`, pipeline/probe): probes trained on cached features of a
    frozen encoder. Views per clip: data.eval_clips x data.eval_crops."""

    methods: list[ProbeMethod] = field(default_factory=lambda: list(typing.get_args(ProbeMethod)))
    train_split: str = "train"  # the probes' training data (its labelled samples)
    eval_split: str = "val"  # the reported split; never used to choose anything
    holdout_fraction: float = 0.2  # of train_split's labels, per class: where a grid member is chosen
    knn_k: list[int] = field(default_factory=lambda: [10, 20])
    knn_temperature: float = 0.07
    linear_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    linear_weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3])
    linear_epochs: int = 100
    attentive_lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    attentive_weight_decays: list[float] = field(default_factory=lambda: [0.01, 0.1])
    attentive_epochs: int = 20
    max_tokens: int = 256  # attentive: tokens per view kept (the grid average-pooled down to it)
    batch_size: int = 256  # probe training mini-batch (views)
    seed: int = 0  # probe initialisation, batch order, and the random-init encoder
    output_dir: str = "runs/probe"
    cache: bool = True  # reuse features extracted before for the same encoder, data and split

    def validate(self) -> None:
        check_choices(self, "probe")
        if not self.methods:
            raise ConfigError("probe.methods: name at least one of " + ", ".join(typing.get_args(ProbeMethod)))
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"probe.holdout_fraction: must be in (0, 1), got {self.holdout_fraction}")
        if not self.knn_k or min(self.knn_k) < 1:
            raise ConfigError(f"probe.knn_k: need integers >= 1, got {self.knn_k}")
        for name in ("linear_lrs", "attentive_lrs"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise ConfigError(f"probe.{name}: need learning rates > 0, got {getattr(self, name)}")
        for name in ("linear_weight_decays", "attentive_weight_decays"):
            if not getattr(self, name) or min(getattr(self, name)) < 0:
                raise ConfigError(f"probe.{name}: need weight decays >= 0, got {getattr(self, name)}")
        for name in ("linear_epochs", "attentive_epochs", "max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"probe.{name}: must be >= 1, got {getattr(self, name)}")
        if self.knn_temperature <= 0:
            raise ConfigError(f"probe.knn_temperature: must be > 0, got {self.knn_temperature}")


@dataclass
class ProbeConfig:
    """`vssl probe`: a frozen encoder (model; --init sets model.pretrained), the labelled data
    its features come from (data: recipes set mask_type none, center crops) and the probes."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
