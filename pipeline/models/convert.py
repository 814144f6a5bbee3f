"""Checkpoint import: foreign video / image transformer weights -> our VideoViT, with a report.

    vssl convert SRC DST [--num-frames 16] [--img-size 224] [--attention divided] [--inflate average]
    from pipeline.models.convert import import_checkpoint
    model, report = import_checkpoint("videomae-base-hf/")      # report.unused, report.notes

Formats, detected from the path:
- Hugging Face folders (config.json + model.safetensors, a safetensors index, or
  pytorch_model.bin): VideoMAE (joint, sin-cos positions), TimeSformer (divided or joint, cls
  token) and ViViT (joint, cls token); old and new transformers key names (convert_hf.py).
- the original VideoMAE layout: a .pth state dict (possibly under "model" / "module") with keys
  like encoder.blocks.0.attn.qkv.weight and q_bias / v_bias (convert_pth.py).
- a timm image ViT state dict (.safetensors / .pth), inflated into a video ViT, joint or
  divided, with a centre-frame or averaged tubelet kernel (convert_pth.py).
- our own backbone folders (checkpoint.py), loaded as they are.
.pth / .bin files are read with torch.load(weights_only=True): no pickled objects run.

Guarantees: every source key is mapped, or reported in `unused` when it belongs to a part we do
not import (heads, decoders, poolers); any other unmapped key is an error, so nothing is dropped
silently. A missing source key is an error naming it, and so is a shape mismatch (naming our key
and the source key(s)): no weight keeps a fresh init. Values the source lacks by design are
filled explicitly and listed in `notes` (VideoMAE has no key bias: qkv bias =
cat(q_bias, zeros, v_bias); q_bias and v_bias are never replaced by zeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pipeline.models.backbones.vit import SIZES
from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import (CheckpointError, build_model, checkpoint_kind, load_backbone,
                                        load_checked, read_safetensors)

HEADS_BY_WIDTH = {size["embed_dim"]: size["num_heads"] for size in SIZES.values()}


@dataclass
class ImportReport:
    source: str
    format: str
    unused: list[str] = field(default_factory=list)  # source keys not imported (heads, decoders)
    notes: list[str] = field(default_factory=list)  # values filled by rule, not copied

    def lines(self) -> list[str]:
        out = [f"imported {self.source} ({self.format})"]
        out += [f"  unused: {len(self.unused)} key(s): {', '.join(self.unused)}"] if self.unused else []
        return out + [f"  note: {note}" for note in self.notes]


class WeightMap:
    """Consumes a source state dict into ours, remembering where every value came from."""

    def __init__(self, state: dict[str, Tensor], origin: str):
        self.source, self.origin = dict(state), origin
        self.used: set[str] = set()
        self.out: dict[str, Tensor] = {}
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.source

    def take(self, key: str) -> Tensor:
        if key not in self.source:
            raise CheckpointError(f"{self.origin}: missing key {key}")
        self.used.add(key)
        return self.source[key]

    def take_opt(self, key: str) -> Tensor | None:
        return self.take(key) if key in self.source else None

    def put(self, key: str, value: Tensor, *from_keys: str) -> None:
        self.out[key] = value
        self.sources[key] = " + ".join(from_keys)

    def copy(self, dst: str, src: str) -> None:
        self.put(dst, self.take(src), src)

    def module(self, dst: str, *candidates: str) -> None:
        """Copy weight (and bias, when the source has one) from the first candidate present."""
        for src in candidates:
            if src + ".weight" in self:
                self.copy(dst + ".weight", src + ".weight")
                if src + ".bias" in self:
                    self.copy(dst + ".bias", src + ".bias")
                return
        raise CheckpointError(f"{self.origin}: missing key {candidates[0]}.weight")

    def qkv_bias(self, dst: str, q: str, k: str, v: str) -> None:
        """Fuse separate biases; a source without a key bias gets zeros there (it cancels in softmax)."""
        q_bias, k_bias, v_bias = (self.take_opt(key) for key in (q, k, v))
        if q_bias is None and v_bias is None and k_bias is None:
            return
        if q_bias is None or v_bias is None:
            raise CheckpointError(f"{self.origin}: {q if q_bias is None else v} missing while its "
                                  f"{'value' if q_bias is None else 'query'} bias is present")
        if k_bias is None:
            k_bias = torch.zeros_like(q_bias)
            note = "qkv bias = cat(query bias, zeros, value bias): the source has no key bias"
            if note not in self.notes:
                self.notes.append(note)
        self.put(dst, torch.cat([q_bias, k_bias, v_bias]), q, k, v)

    def left(self) -> list[str]:
        return sorted(k for k in self.source if k not in self.used)


def finish(wmap: WeightMap, config: dict, fmt: str, ignorable: tuple[str, ...], overrides: dict) -> tuple[VideoBackbone, ImportReport]:
    """Refuse stray source keys, build the model (overrides win), load with checks, report."""
    left = wmap.left()
    stray = [k for k in left if not k.startswith(ignorable)]
    if stray:
        raise CheckpointError(f"{wmap.origin}: {len(stray)} source key(s) with no place in the model "
                              f"(refusing a partial import), e.g. {stray[:3]}")
    model = build_model(config, wmap.origin, **overrides)
    state = model.remap_state_dict(wmap.out, config)
    load_checked(model, state, wmap.origin, wmap.sources)
    return model, ImportReport(wmap.origin, fmt, left, wmap.notes)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat {key: tensor} from .safetensors or a weights-only torch file (unwrapping "model" etc.)."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for pickles it refuses or cannot parse
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True) "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {bad[0]}: expected a tensor, got {type(state[bad[0]]).__name__}")
    return state


def vit_name(attention: str, width: int) -> str:
    """The registered factory nearest in width (the imported config overrides every size field)."""
    size = min(SIZES, key=lambda s: abs(SIZES[s]["embed_dim"] - width))
    return f"vit_{size}_{attention}"


def heads_for(width: int, num_heads: int | None, origin: str) -> int:
    if num_heads is not None:
        return num_heads
    if width not in HEADS_BY_WIDTH:
        raise CheckpointError(f"{origin}: the state dict does not record the number of heads for width "
                              f"{width}; pass num_heads (--num-heads)")
    return HEADS_BY_WIDTH[width]


def import_checkpoint(path: str | Path, *, num_heads: int | None = None,
                      attention: str = "joint", inflate: str = "center", tubelet: int = 2,
                      **overrides) -> tuple[VideoBackbone, ImportReport]:
    """Any supported checkpoint -> (model, report). Overrides (num_frames, img_size, drop_path_rate,
    ...) rebuild the model; learned positions are resampled to the new grid."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "backbone":
        return load_backbone(path, **overrides), ImportReport(str(path), "vssl-backbone")
    if kind != "state-dict":  # a folder: convert_hf says what a non-HF one lacks
        from pipeline.models.convert_hf import import_hf

        return import_hf(path, overrides)
    from pipeline.models.convert_pth import inflate_timm, videomae_original

    state = read_state_dict(path)
    patch = state.get("patch_embed.proj.weight", state.get("encoder.patch_embed.proj.weight"))
    if patch is not None and patch.dim() == 5:
        return videomae_original(WeightMap(state, str(path)), num_heads, overrides)
    if patch is not None and patch.dim() == 4:
        return inflate_timm(WeightMap(state, str(path)), num_heads, attention, inflate, tubelet, overrides)
    raise CheckpointError(f"{path}: unrecognised layout (no 4-D or 5-D patch_embed.proj.weight); "
                          f"first keys: {list(state)[:3]}")
