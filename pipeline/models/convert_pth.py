"""Plain state dicts -> VideoViT: the original VideoMAE layout, and timm image ViT inflation.

    vssl convert videomae_pretrain_base.pth out/backbone --num-frames 16 --img-size 224
    vssl convert vit_small_patch16.safetensors out/inflated --attention divided --inflate average

Original VideoMAE (`encoder.` prefix in pretraining checkpoints, none in fine-tuned ones):
`patch_embed.proj` (Conv3d), `blocks.N.{norm1, attn.qkv, attn.q_bias, attn.v_bias, attn.proj,
norm2, mlp.fc1, mlp.fc2}`, then `norm` (pretraining encoder) or `fc_norm` (mean-pooled
fine-tuning). No key bias exists: qkv bias = cat(q_bias, zeros, v_bias). Positions are the fixed
sin-cos table unless a learned `pos_embed` is present. The state dict records neither the head
count (taken from the width: 192 -> 3, 384 -> 6, 768 -> 12, 1024/1280 -> 16, else num_heads)
nor the clip size (16 x 224 unless num_frames / img_size say otherwise).

timm image ViT inflation (`patch_embed.proj` is a Conv2d): the kernel becomes a tubelet kernel
of `tubelet` frames, either "center" (the 2-D kernel on the centre frame, zeros elsewhere) or
"average" (the 2-D kernel / tubelet on every frame); on a static clip both give every frame the
image embedding. The spatial position table is repeated over the num_frames / tubelet time
steps (learned positions); a cls token keeps its position folded in. Targets:
- joint: the image blocks as they are. Without a cls token, a static clip then gives every frame
  exactly the image model's tokens (attention over t identical copies of each key is unchanged).
- divided: spatial attention = the image attention; temporal attention starts as a copy of it
  with a zero output projection (TimeSformer's zero-initialised temporal_fc), so the model
  starts as the image model applied frame by frame.
"""

from __future__ import annotations

import math

import torch

from pipeline.models.base import VideoBackbone
from pipeline.models.checkpoint import CheckpointError
from pipeline.models.convert import ImportReport, WeightMap, finish, heads_for, vit_name


def _count_blocks(wmap: WeightMap) -> int:
    depth = 0
    while f"blocks.{depth}.norm1.weight" in wmap:
        depth += 1
    if depth == 0:
        raise CheckpointError(f"{wmap.origin}: missing key blocks.0.norm1.weight")
    return depth


def _final_norm(wmap: WeightMap) -> str:
    """Map `norm` (on tokens) or `fc_norm` (on the pooled vector) onto our `norm`."""
    for src, kind in (("norm", "tokens"), ("fc_norm", "pooled")):
        if src + ".weight" in wmap:
            wmap.module("norm", src)
            return kind
    return "none"


def _mlp(wmap: WeightMap, src: str, dst: str) -> None:
    for name in ("norm2", "mlp.fc1", "mlp.fc2"):
        wmap.module(dst + name, src + name)


def videomae_original(wmap: WeightMap, num_heads: int | None, overrides: dict) -> tuple[VideoBackbone, ImportReport]:
    wmap.source = {k.removeprefix("encoder."): v for k, v in wmap.source.items()}
    patch = wmap.source["patch_embed.proj.weight"]
    width, in_chans, *tubelet = patch.shape
    depth = _count_blocks(wmap)
    num_frames, img_size = overrides.pop("num_frames", 16), overrides.pop("img_size", 224)
    pos_embed = "learned" if "pos_embed" in wmap else "sincos"
    wmap.module("patch_embed.proj", "patch_embed.proj")
    if pos_embed == "learned":
        wmap.copy("pos_embed", "pos_embed")
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"blocks.{i}.mixer."
        wmap.module(dst + "norm", src + "norm1")
        wmap.copy(dst + "attn.qkv.weight", src + "attn.qkv.weight")
        if src + "attn.qkv.bias" in wmap:
            wmap.copy(dst + "attn.qkv.bias", src + "attn.qkv.bias")
        else:
            wmap.qkv_bias(dst + "attn.qkv.bias", src + "attn.q_bias", src + "attn.k_bias", src + "attn.v_bias")
        wmap.module(dst + "attn.proj", src + "attn.proj")
        _mlp(wmap, src, f"blocks.{i}.")
    config = dict(name=vit_name("joint", width), attention="joint", embed_dim=width, depth=depth,
                  num_heads=heads_for(width, num_heads, wmap.origin),
                  mlp_ratio=wmap.source["blocks.0.mlp.fc1.weight"].shape[0] / width,
                  num_frames=num_frames, img_size=img_size, patch_size=list(tubelet), in_chans=in_chans,
                  qkv_bias=f"blocks.{depth - 1}.mixer.attn.qkv.bias" in wmap.out, pos_embed=pos_embed,
                  final_norm=_final_norm(wmap), norm_eps=1e-6, act="gelu")
    ignorable = ("decoder.", "encoder_to_decoder.", "mask_token", "head.")
    return finish(wmap, config, "videomae-original", ignorable, overrides)


def inflate_timm(wmap: WeightMap, num_heads: int | None, attention: str, inflate: str, tubelet: int,
                 overrides: dict) -> tuple[VideoBackbone, ImportReport]:
    if attention not in ("joint", "divided"):
        raise CheckpointError(f"attention: image ViT inflation supports joint and divided, got {attention!r}")
    if inflate not in ("center", "average") or tubelet < 1:
        raise CheckpointError(f"inflate: expected center or average with tubelet >= 1, got {inflate!r}, {tubelet}")
    kernel = wmap.take("patch_embed.proj.weight")
    width, in_chans, ph, pw = kernel.shape
    if inflate == "center":
        video_kernel = torch.zeros(width, in_chans, tubelet, ph, pw, dtype=kernel.dtype)
        video_kernel[:, :, tubelet // 2] = kernel
        wmap.notes.append(f"tubelet kernel: the image kernel on frame {tubelet // 2} of {tubelet}, zeros elsewhere")
    else:
        video_kernel = kernel[:, :, None].expand(-1, -1, tubelet, -1, -1) / tubelet
        wmap.notes.append(f"tubelet kernel: the image kernel / {tubelet} on each of {tubelet} frames")
    wmap.put("patch_embed.proj.weight", video_kernel, "patch_embed.proj.weight")
    wmap.copy("patch_embed.proj.bias", "patch_embed.proj.bias")

    num_frames = overrides.pop("num_frames", 16)
    pos = wmap.take("pos_embed")
    has_cls = "cls_token" in wmap
    pos_prefix = 1 if has_cls and math.isqrt(pos.shape[1]) ** 2 != pos.shape[1] else 0
    side = math.isqrt(pos.shape[1] - pos_prefix)
    if side * side != pos.shape[1] - pos_prefix or num_frames % tubelet:
        raise CheckpointError(f"{wmap.origin}: pos_embed: {pos.shape[1]} positions are not a square grid "
                              f"(or num_frames {num_frames} is not a multiple of the tubelet {tubelet})")
    if has_cls:
        cls = wmap.take("cls_token") + (pos[:, :1] if pos_prefix else 0)
        wmap.put("cls_token", cls, "cls_token", "pos_embed[:, 0]" if pos_prefix else "cls_token")
    wmap.put("pos_embed", pos[:, pos_prefix:].repeat(1, num_frames // tubelet, 1), "pos_embed (repeated over time)")

    depth = _count_blocks(wmap)
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"blocks.{i}.mixer."
        spatial = ("norm", "attn") if attention == "joint" else ("norm_s", "attn_s")
        wmap.module(dst + spatial[0], src + "norm1")
        wmap.module(dst + spatial[1] + ".qkv", src + "attn.qkv")
        wmap.module(dst + spatial[1] + ".proj", src + "attn.proj")
        if attention == "divided":
            wmap.module(dst + "norm_t", src + "norm1")
            wmap.module(dst + "attn_t.qkv", src + "attn.qkv")
            proj = wmap.out[dst + "attn_s.proj.weight"]
            wmap.put(dst + "attn_t.proj.weight", torch.zeros_like(proj), "zero init")
            wmap.put(dst + "attn_t.proj.bias", torch.zeros(proj.shape[0], dtype=proj.dtype), "zero init")
        _mlp(wmap, src, f"blocks.{i}.")
    if attention == "divided":
        wmap.notes.append("temporal attention: qkv copied from the image attention, output projection zero")
    config = dict(name=vit_name(attention, width), attention=attention, embed_dim=width, depth=depth,
                  num_heads=heads_for(width, num_heads, wmap.origin),
                  mlp_ratio=wmap.source["blocks.0.mlp.fc1.weight"].shape[0] / width,
                  num_frames=num_frames, img_size=side * ph, patch_size=[tubelet, ph, pw], in_chans=in_chans,
                  qkv_bias="blocks.0.attn.qkv.bias" in wmap, pos_embed="learned", cls_token=has_cls,
                  final_norm=_final_norm(wmap), norm_eps=1e-6, act="gelu")
    return finish(wmap, config, f"timm-vit-inflated-{inflate}", ("head.",), overrides)
