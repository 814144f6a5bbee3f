"""Export: one of our video ViT encoders -> the transformers model that computes it (convert_hf.py,
reversed). `vssl export` (export_cli.py) reads the checkpoint and writes the folder.

    from pipeline.models.export import to_hf
    hf = to_hf(encoder)        # hf.config (config.json), hf.state (model.safetensors), hf.notes

What becomes what; each computes what ours computes, weight for weight (up to float rounding):
- joint attention, no cls token, sin-cos positions -> VideoMAE. final_norm "tokens" -> VideoMAEModel
  with its `layernorm`; "none" -> VideoMAEModel with use_mean_pooling; "pooled" (fc_norm) ->
  VideoMAEForVideoClassification with num_labels 0, whose logits are our pooled vector (its fc_norm
  has eps 1e-5, so the model must too). VideoMAE has no key bias: ours is dropped (softmax ignores
  it; an import fills zeros). Tokens are in our (t, h, w) order.
- joint attention with a cls token -> ViViT (VivitModel, ViViT model 1): cls token, the position
  table with a zero cls position (ours is folded into the token). last_hidden_state[:, 0] is our
  pooled vector; ViViT's pooler (dense + tanh) is not ours and transformers initialises it.
- divided attention with a cls token, per-frame patches (pt = 1) and a position table that is a
  time table plus a space table (one imported from TimeSformer is) -> TimeSformer
  (divided_space_time); temporal_dense is the identity. TimeSformer orders tokens (h*w, t).
Anything else raises ExportError, one line naming the model and why (REFUSED, `_vit_refusal`).
Only encoders have a place: our VideoMAE decoder takes 3-D (t, h, w) sin-cos positions and a biased
input projection, where transformers' VideoMAEForPreTraining fixes 1-D positions and a bias-free
encoder_to_decoder (ENCODER_ONLY says what stays behind, in one line).
Names come from convert_hf.py's tables (BLOCK_MODULES, ATTENTION_OUT, TO_HF_ACTIVATION), in the
layout transformers itself saves (VideoMAE q_bias / v_bias, ViViT query / key / value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.models.backbones.vit import VideoViT
from pipeline.models.base import VideoBackbone
from pipeline.models.convert_hf import ATTENTION_OUT, BLOCK_MODULES, TO_HF_ACTIVATION

FC_NORM_EPS = 1e-5  # nn.LayerNorm's default, which VideoMAEForVideoClassification's fc_norm keeps
SEPARABLE_TOL = 1e-6  # relative residual under which a position table counts as time + space

REFUSED = {  # attention / class -> why transformers has nothing that computes it
    "factorised": "the factorised encoder (ViViT model 2: spatial blocks, then temporal blocks over "
                  "frame tokens); transformers' VivitModel is ViViT model 1 (joint attention) only",
    "axial": "axial attention (along T, then H, then W); no transformers video model attends one axis at a time",
    "sparse": "sparse attention (local 3-D windows + global tokens); no transformers video model has it",
    "MViT": "MViTv2 (pooling attention over stages of changing width); transformers has no video MViT",
    "SwinTransformer3d": "Video Swin (shifted 3-D windows over stages of changing width); transformers has "
                         "no Video Swin",
}
ENCODER_ONLY = {
    "videomae": "encoder only: our VideoMAE decoder adds 3-D (t, h, w) sin-cos positions after a biased "
                "projection; transformers' VideoMAEForPreTraining fixes 1-D positions and a bias-free "
                "encoder_to_decoder, so the decoder has no exact place there",
    "predictive": "encoder only: the predictive objective's predictor has no transformers counterpart",
    "finetune": "encoder only: the task head is not exported",
}


class ExportError(ValueError):
    """The model has no exact transformers counterpart, or OUT is in the way; one line."""


@dataclass
class HFModel:
    """A transformers model as files: config.json fields and the state dict it saves."""

    model_type: str
    architecture: str
    config: dict
    state: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)


# -- which transformers model --------------------------------------------------------------------

def _check(model: VideoBackbone) -> str:
    """The transformers model_type `model` exports to, or ExportError naming the model and why."""
    cfg = model.config
    why = REFUSED.get(type(model).__name__)
    if why is None and not isinstance(model, VideoViT):
        why = f"a {type(model).__name__}, not a video ViT; transformers' VideoMAE / TimeSformer / ViViT are ViTs"
    elif why is None:
        why = REFUSED.get(cfg["attention"]) or _vit_refusal(cfg, model)
    if why:
        raise ExportError(f"{cfg.get('name', type(model).__name__)}: {why}")
    if cfg["attention"] == "divided":
        return "timesformer"
    return "vivit" if cfg["cls_token"] else "videomae"


def _vit_refusal(cfg: dict, model: VideoViT) -> str | None:
    """Why a joint or divided VideoViT has no exact transformers counterpart, or None."""
    pt, ph, pw = cfg["patch_size"]
    attention, cls = cfg["attention"], cfg["cls_token"]
    if cfg["stem"] != "tubelet":
        return "a conv stem; transformers' video ViTs embed each tubelet with one linear map"
    if cfg["input_transform"] != "none":
        return f"input_transform {cfg['input_transform']} (x_t - x_(t-1)); transformers' video ViTs embed the frames"
    if cfg["mask_mode"] != "visible_only":
        return "mask_mode mask_token (hidden tokens encoded as a learned token); transformers' VideoMAE drops them"
    if ph != pw:
        return f"patch_size {cfg['patch_size']}: transformers' video ViTs take square patches"
    if attention == "joint" and not cls:  # -> VideoMAE
        if cfg["pos_embed"] != "sincos":
            return ("learned positions without a cls token: VideoMAE fixes a sin-cos table and ViViT, which "
                    "learns one, has a cls token")
        if cfg["final_norm"] == "pooled" and cfg["norm_eps"] != FC_NORM_EPS:
            return f"final_norm pooled with norm_eps {cfg['norm_eps']}: VideoMAE's fc_norm has eps {FC_NORM_EPS}"
        return None
    if not cls:
        return "no cls token; TimeSformer has one, and it joins every frame's spatial attention"
    target = "TimeSformer" if attention == "divided" else "ViViT (the cls-token joint ViT)"
    if cfg["final_norm"] != "tokens":
        return f"final_norm {cfg['final_norm']}: {target} always ends with a LayerNorm over every token"
    if attention == "joint":  # -> ViViT
        return None
    if pt != 1:
        return f"patch_size {cfg['patch_size']}: TimeSformer embeds single frames (pt = 1)"
    residual = _split_positions(model)[2]
    if residual > 0:
        return (f"its {cfg['pos_embed']} (t, h, w) position table is not a time table plus a space table "
                f"(TimeSformer's layout): relative residual {residual:.1e}")
    return None


def _split_positions(model: VideoViT) -> tuple[Tensor, Tensor, float]:
    """(time (t, D), space (h*w, D), relative residual over SEPARABLE_TOL or 0) of the position table."""
    t = model.base_grid[0]
    pos = model.pos_embed.detach().reshape(t, -1, model.embed_dim)
    space = pos[0]
    time = pos[:, :1] - pos[:1, :1]
    scale = float(pos.abs().max().clamp(min=1.0))
    residual = float((pos - (time + space[None])).abs().max()) / scale
    return time[:, 0].contiguous(), space.contiguous(), residual if residual > SEPARABLE_TOL else 0.0


# -- the state dict transformers saves ----------------------------------------------------------

def _common_config(model: VideoViT) -> dict:
    cfg = model.config
    return dict(hidden_size=cfg["embed_dim"], num_hidden_layers=cfg["depth"], num_attention_heads=cfg["num_heads"],
                intermediate_size=model.blocks[0].mlp.fc1.out_features, hidden_act=TO_HF_ACTIVATION[cfg["act"]],
                layer_norm_eps=cfg["norm_eps"], image_size=cfg["img_size"], num_frames=cfg["num_frames"],
                num_channels=cfg["in_chans"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                initializer_range=0.02, dtype="float32")


class _Writer:
    """Copies our tensors under HF names (contiguous copies: safetensors refuses shared storage),
    remembering which of ours it read, so that none is left out unnoticed."""

    def __init__(self, model: VideoViT):
        self.ours = dict(model.state_dict())
        self.read: set[str] = set()
        self.out: dict[str, Tensor] = {}

    def take(self, key: str) -> Tensor:
        self.read.add(key)
        return self.ours[key].detach()

    def put(self, key: str, value: Tensor) -> None:
        self.out[key] = value.clone().contiguous()

    def module(self, dst: str, src: str) -> None:
        for part in ("weight", "bias"):
            if f"{src}.{part}" in self.ours:
                self.put(f"{dst}.{part}", self.take(f"{src}.{part}"))

    def block_tail(self, dst: str, src: str) -> None:
        """The MLP half of a layer, through the table the import reads."""
        for ours, names in BLOCK_MODULES.items():
            self.module(dst + names[0], src + ours)

    def attention(self, dst: str, src: str, separate: str | None) -> float:
        """One attention: fused qkv, or `separate` q/k/v Linears ("vivit": with key bias, "videomae":
        q_bias / v_bias only); returns the largest key bias dropped."""
        self.module(dst + ATTENTION_OUT[0], src + "proj")
        if separate is None:
            self.module(dst + "attention.qkv", src + "qkv")
            return 0.0
        weight = self.take(src + "qkv.weight")
        bias = self.take(src + "qkv.bias") if src + "qkv.bias" in self.ours else None
        for name, w in zip(("query", "key", "value"), weight.chunk(3)):
            self.put(f"{dst}attention.{name}.weight", w)
        if bias is None:
            return 0.0
        q, k, v = bias.chunk(3)
        if separate == "vivit":
            for name, b in zip(("query", "key", "value"), (q, k, v)):
                self.put(f"{dst}attention.{name}.bias", b)
            return 0.0
        self.put(dst + "attention.q_bias", q)
        self.put(dst + "attention.v_bias", v)
        return float(k.abs().max())


def _videomae(model: VideoViT, w: _Writer) -> HFModel:
    cfg = model.config
    pooled = cfg["final_norm"] == "pooled"
    enc = "videomae." if pooled else ""
    w.module(enc + "embeddings.patch_embeddings.projection", "patch_embed.proj")
    key_bias = 0.0
    for i in range(cfg["depth"]):
        dst, src = f"{enc}encoder.layer.{i}.", f"blocks.{i}."
        w.module(dst + "layernorm_before", src + "mixer.norm")
        key_bias = max(key_bias, w.attention(dst + "attention.", src + "mixer.attn.", "videomae"))
        w.block_tail(dst, src)
    if cfg["final_norm"] != "none":
        w.module("fc_norm" if pooled else "layernorm", "norm")
    config = dict(_common_config(model), patch_size=cfg["patch_size"][1], tubelet_size=cfg["patch_size"][0],
                  qv_bias=cfg["qkv_bias"], use_mean_pooling=cfg["final_norm"] != "tokens")
    if pooled:
        config.update(id2label={}, label2id={})  # num_labels 0: the classifier is the identity
    notes = [f"key bias dropped (largest {key_bias:.1e}): VideoMAE has none and softmax ignores it"] if key_bias else []
    arch = "VideoMAEForVideoClassification" if pooled else "VideoMAEModel"
    return HFModel("videomae", arch, config, w.out, notes)


def _prefix_tokens(w: _Writer, pos: Tensor) -> None:
    """cls token as it is, and a position table whose cls position is zero (ours is folded in)."""
    w.put("embeddings.cls_token", w.take("cls_token"))
    w.put("embeddings.position_embeddings", torch.cat([torch.zeros_like(pos[:, :1]), pos], 1))


def _vivit(model: VideoViT, w: _Writer) -> HFModel:
    cfg = model.config
    w.module("embeddings.patch_embeddings.projection", "patch_embed.proj")
    w.read.add("pos_embed")  # a parameter when learned, a buffer (not in the state dict) when sin-cos
    _prefix_tokens(w, model.pos_embed.detach())
    for i in range(cfg["depth"]):
        dst, src = f"encoder.layer.{i}.", f"blocks.{i}."
        w.module(dst + "layernorm_before", src + "mixer.norm")
        w.attention(dst + "attention.", src + "mixer.attn.", "vivit")
        w.block_tail(dst, src)
    w.module("layernorm", "norm")
    config = dict(_common_config(model), tubelet_size=list(cfg["patch_size"]), qkv_bias=cfg["qkv_bias"])
    notes = ["ViViT's pooler (dense + tanh) is not part of the model: transformers initialises it at random; "
             "last_hidden_state[:, 0] is the pooled vector"]
    if cfg["pos_embed"] == "sincos":
        notes.append("the sin-cos positions become ViViT's learned table (an import brings them back as learned)")
    return HFModel("vivit", "VivitModel", config, w.out, notes)


def _timesformer(model: VideoViT, w: _Writer) -> HFModel:
    cfg = model.config
    d = cfg["embed_dim"]
    w.put("embeddings.patch_embeddings.projection.weight", w.take("patch_embed.proj.weight")[:, :, 0])
    w.put("embeddings.patch_embeddings.projection.bias", w.take("patch_embed.proj.bias"))
    time, space, _ = _split_positions(model)
    w.read.add("pos_embed")
    _prefix_tokens(w, space[None])
    w.put("embeddings.time_embeddings", time[None])
    for i in range(cfg["depth"]):
        dst, src = f"encoder.layer.{i}.", f"blocks.{i}."
        w.module(dst + "temporal_layernorm", src + "mixer.norm_t")
        w.attention(dst + "temporal_attention.", src + "mixer.attn_t.", None)
        dtype = w.ours[src + "mixer.attn_t.proj.weight"].dtype
        w.put(dst + "temporal_dense.weight", torch.eye(d, dtype=dtype))
        w.put(dst + "temporal_dense.bias", torch.zeros(d, dtype=dtype))
        w.module(dst + "layernorm_before", src + "mixer.norm_s")
        w.attention(dst + "attention.", src + "mixer.attn_s.", None)
        w.block_tail(dst, src)
    w.module("layernorm", "norm")
    config = dict(_common_config(model), patch_size=cfg["patch_size"][1], attention_type="divided_space_time",
                  qkv_bias=cfg["qkv_bias"])  # no drop_path_rate: transformers 5.23 types it int
    notes = ["position table split into TimeSformer's time and space tables; temporal_dense is the identity; "
             "tokens come out in (h*w, t) order"]
    return HFModel("timesformer", "TimesformerModel", config, w.out, notes)


TARGETS = {"videomae": _videomae, "vivit": _vivit, "timesformer": _timesformer}


def to_hf(model: VideoBackbone) -> HFModel:
    """The transformers model (config + state dict) that computes what `model` computes."""
    writer = _Writer(model)
    hf = TARGETS[_check(model)](model, writer)
    left = sorted(set(writer.ours) - writer.read)
    if left:  # a weight this module does not know yet: refuse rather than drop it
        raise ExportError(f"{model.config['name']}: {len(left)} weight(s) with no place in {hf.architecture}, "
                          f"e.g. {left[:3]}")
    hf.config = {"architectures": [hf.architecture], "model_type": hf.model_type, **hf.config}
    return hf
