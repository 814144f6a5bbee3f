"""Hugging Face transformers video models -> VideoViT (called by convert.import_checkpoint).

    model, report = import_checkpoint("hf-folder/")   # config.json + model.safetensors

- VideoMAE (model_type "videomae"): joint attention, fixed sin-cos positions, no cls token. Keys
  `encoder.layer.N.attention.attention.{query,key,value}` (no key bias; hub checkpoints hold
  `q_bias` / `v_bias`, newer saves `query.bias` / `value.bias`). Final norm: `layernorm`
  (use_mean_pooling=False) -> "tokens", `fc_norm` (classification) -> "pooled", else "none".
- TimeSformer ("timesformer"): per-frame 16x16 patches -> tubelet 1x16x16, cls token, space and
  time position tables folded into one (t, h, w) table. divided_space_time -> divided: the
  temporal branch's output projection and `temporal_dense` are two Linears in a row, folded
  into one (W = W_dense @ W_out, b = W_dense @ b_out + b_dense). HF orders tokens (h*w, t); ours
  are (t, h, w) - the same tokens, reordered.
- ViViT ("vivit"): joint attention over tubelets with a cls token and learned positions; keys
  `layers.N.attention.{q,k,v,o}_proj` (transformers 5) or `encoder.layer.N...` (older);
  gelu_fast -> act "gelu_tanh". The pooler (dense + tanh) is a head: reported unused.
A prefix `videomae.` / `timesformer.` / `vivit.` (task models) is stripped; their heads are unused.
The module tables below (BLOCK_MODULES, ATTENTION_OUT, TO_HF_ACTIVATION) serve both directions:
pipeline/models/export.py writes the first name of each, the one transformers itself saves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import CheckpointError, read_json, read_safetensors
from pipeline.models.convert import ImportReport, WeightMap, finish, read_state_dict, vit_name

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_fast": "gelu_tanh", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh"}
# ours -> the HF name computing exactly it (gelu_fast / gelu_new are other formulas of the tanh GELU)
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# our block module -> HF module names inside one HF layer, the name transformers saves first
BLOCK_MODULES = {"norm2": ("layernorm_after",), "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
                 "mlp.fc2": ("output.dense", "mlp.fc2")}
ATTENTION_OUT = ("output.dense", "o_proj")  # an attention's output projection, inside its HF module


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{index}: weight_map: empty")
        return {k: v for name in files for k, v in read_safetensors(folder / name).items()}
    if (folder / "pytorch_model.bin").is_file():
        return read_state_dict(folder / "pytorch_model.bin")
    raise CheckpointError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def import_hf(folder: Path, overrides: dict) -> tuple[VideoBackbone, ImportReport]:
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: neither a vssl backbone folder (backbone.json) nor a Hugging Face "
                              f"folder (config.json)")
    cfg = read_json(folder / "config.json")
    model_type = cfg.get("model_type")
    if model_type not in CONVERTERS:
        raise CheckpointError(f"{folder / 'config.json'}: model_type: expected one of {sorted(CONVERTERS)}, "
                              f"got {model_type!r}")
    prefix = model_type + "."
    state = {k.removeprefix(prefix): v for k, v in read_hf_weights(folder).items()}
    wmap = WeightMap(state, str(folder))
    config, ignorable = CONVERTERS[model_type](wmap, _Config(cfg, folder / "config.json"))
    return finish(wmap, config, f"hf-{model_type}", ignorable, overrides)


class _Config:
    """config.json fields with one-line errors naming the key."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def int(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{self.path}: {key}: expected a positive integer, got {json.dumps(value)}")
        return value

    def square(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{self.path}: {key}: expected one size (square input), got {json.dumps(value)}")
        return value

    def vit(self, attention: str, patch: tuple[int, int, int], **extra) -> dict:
        width = self.int("hidden_size")
        act = self.data.get("hidden_act", "gelu")
        if act not in HF_ACTIVATIONS:
            raise CheckpointError(f"{self.path}: hidden_act: expected one of {sorted(HF_ACTIVATIONS)}, got {act!r}")
        return dict(name=vit_name(attention, width), attention=attention, embed_dim=width,
                    depth=self.int("num_hidden_layers"), num_heads=self.int("num_attention_heads"),
                    mlp_ratio=self.int("intermediate_size") / width, num_frames=self.int("num_frames"),
                    img_size=self.square("image_size"), patch_size=list(patch),
                    in_chans=self.int("num_channels"), norm_eps=float(self.data.get("layer_norm_eps", 1e-12)),
                    act=HF_ACTIVATIONS[act], qkv_bias=bool(self.data.get("qv_bias", self.data.get("qkv_bias", True))),
                    **extra)


def _layer_prefix(wmap: WeightMap) -> str:
    return "layers." if "layers.0.layernorm_before.weight" in wmap else "encoder.layer."


def _attention(wmap: WeightMap, src: str, dst: str) -> None:
    """One HF attention module (prefix `src`, e.g. encoder.layer.0.attention.) -> our Attention."""
    if src + "attention.qkv.weight" in wmap:
        wmap.module(dst + "qkv", src + "attention.qkv")
    else:
        names = ("attention.query", "attention.key", "attention.value")
        if src + "q_proj.weight" in wmap:
            names = ("q_proj", "k_proj", "v_proj")
        keys = [src + n for n in names]
        wmap.put(dst + "qkv.weight", torch.cat([wmap.take(k + ".weight") for k in keys]),
                 *(k + ".weight" for k in keys))
        q_bias = keys[0] + ".bias" if keys[0] + ".bias" in wmap else src + "attention.q_bias"
        v_bias = keys[2] + ".bias" if keys[2] + ".bias" in wmap else src + "attention.v_bias"
        wmap.qkv_bias(dst + "qkv.bias", q_bias, keys[1] + ".bias", v_bias)
    wmap.module(dst + "proj", *(src + name for name in ATTENTION_OUT))


def _mlp(wmap: WeightMap, src: str, dst: str) -> None:
    for ours, names in BLOCK_MODULES.items():
        wmap.module(dst + ours, *(src + name for name in names))


def _joint_block(wmap: WeightMap, src: str, dst: str) -> None:
    wmap.module(dst + "mixer.norm", src + "layernorm_before")
    _attention(wmap, src + "attention.", dst + "mixer.attn.")
    _mlp(wmap, src, dst)


def _cls_with_position(wmap: WeightMap) -> None:
    pos = wmap.take("embeddings.position_embeddings")
    cls = wmap.take("embeddings.cls_token")
    wmap.put("cls_token", cls + pos[:, :1], "embeddings.cls_token", "embeddings.position_embeddings[:, 0]")


def _videomae(wmap: WeightMap, cfg: _Config) -> tuple[dict, tuple[str, ...]]:
    patch = cfg.int("patch_size")
    final_norm = "tokens" if "layernorm.weight" in wmap else "pooled" if "fc_norm.weight" in wmap else "none"
    config = cfg.vit("joint", (cfg.int("tubelet_size"), patch, patch), pos_embed="sincos", final_norm=final_norm)
    wmap.module("patch_embed.proj", "embeddings.patch_embeddings.projection")
    for i in range(config["depth"]):
        _joint_block(wmap, f"encoder.layer.{i}.", f"blocks.{i}.")
    if final_norm != "none":
        wmap.module("norm", "layernorm" if final_norm == "tokens" else "fc_norm")
    return config, ("classifier.", "decoder.", "encoder_to_decoder.", "mask_token")


def _timesformer(wmap: WeightMap, cfg: _Config) -> tuple[dict, tuple[str, ...]]:
    kinds = {"divided_space_time": "divided", "joint_space_time": "joint"}
    kind = cfg.data.get("attention_type", "divided_space_time")
    if kind not in kinds:
        raise CheckpointError(f"{cfg.path}: attention_type: expected one of {sorted(kinds)}, got {kind!r}")
    patch = cfg.int("patch_size")
    config = cfg.vit(kinds[kind], (1, patch, patch), pos_embed="learned", cls_token=True, final_norm="tokens")
    proj = "embeddings.patch_embeddings.projection"
    wmap.put("patch_embed.proj.weight", wmap.take(proj + ".weight").unsqueeze(2), proj + ".weight")
    wmap.copy("patch_embed.proj.bias", proj + ".bias")
    _cls_with_position(wmap)
    space = wmap.source["embeddings.position_embeddings"][0, 1:]
    time = wmap.take("embeddings.time_embeddings")[0]
    wmap.put("pos_embed", (time[:, None] + space[None]).reshape(1, -1, space.shape[-1]),
             "embeddings.time_embeddings", "embeddings.position_embeddings[:, 1:]")
    wmap.notes.append("space and time position tables summed into one (t, h, w) table; "
                      "cls position folded into cls_token")
    for i in range(config["depth"]):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        if kinds[kind] == "joint":
            _joint_block(wmap, src, dst)
            continue
        wmap.module(dst + "mixer.norm_t", src + "temporal_layernorm")
        wmap.module(dst + "mixer.attn_t.qkv", src + "temporal_attention.attention.qkv")
        out_w, out_b = (wmap.take(src + f"temporal_attention.output.dense.{p}").float() for p in ("weight", "bias"))
        dense_w, dense_b = (wmap.take(src + f"temporal_dense.{p}").float() for p in ("weight", "bias"))
        wmap.put(dst + "mixer.attn_t.proj.weight", dense_w @ out_w, src + "temporal_dense @ output.dense")
        wmap.put(dst + "mixer.attn_t.proj.bias", dense_w @ out_b + dense_b, src + "temporal_dense @ output.dense")
        wmap.module(dst + "mixer.norm_s", src + "layernorm_before")
        _attention(wmap, src + "attention.", dst + "mixer.attn_s.")
        _mlp(wmap, src, dst)
    if kinds[kind] == "divided":
        wmap.notes.append("temporal_dense folded into the temporal attention's output projection")
    wmap.module("norm", "layernorm")
    return config, ("classifier.",)


def _vivit(wmap: WeightMap, cfg: _Config) -> tuple[dict, tuple[str, ...]]:
    tubelet = cfg.data.get("tubelet_size")
    if not (isinstance(tubelet, (list, tuple)) and len(tubelet) == 3 and tubelet[1] == tubelet[2]):
        raise CheckpointError(f"{cfg.path}: tubelet_size: expected [t, p, p], got {json.dumps(tubelet)}")
    config = cfg.vit("joint", tuple(tubelet), pos_embed="learned", cls_token=True, final_norm="tokens")
    wmap.module("patch_embed.proj", "embeddings.patch_embeddings.projection")
    _cls_with_position(wmap)
    wmap.put("pos_embed", wmap.source["embeddings.position_embeddings"][:, 1:], "embeddings.position_embeddings[:, 1:]")
    layer = _layer_prefix(wmap)
    for i in range(config["depth"]):
        _joint_block(wmap, f"{layer}{i}.", f"blocks.{i}.")
    wmap.module("norm", "layernorm")
    return config, ("pooler.", "classifier.")


CONVERTERS = {"videomae": _videomae, "timesformer": _timesformer, "vivit": _vivit}
