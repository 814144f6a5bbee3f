"""The video ViT family: one encoder, five attention variants, sizes tiny..huge.

    from pipeline.models import create_model
    model = create_model("vit_small_joint", num_frames=16, img_size=224)
    out = model(video, mask=mask, return_layers=(5, 11))  # video (B, 3, 16, 224, 224), mask (B, 1568)
    out.tokens, out.pooled, out.layers, model.flops(16, 224, 224, mask=mask[:1])

Registered names: `vit_{tiny,small,base,large,huge}_{joint,divided,factorised,axial,sparse}`
(attention variants: pipeline/models/attention.py). Sizes (embed_dim / depth / heads):
tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16, huge 1280/32/16.

- Tubelet embedding (default 2x16x16) over the (t, h, w) token grid, or with stem="conv" a small
  3x3x3 conv stem onto the same grid (layers.ConvStem; masked encoding keeps it off hidden pixels).
  input_transform="frame_diff" feeds the stem x_t - x_(t-1) instead of the frames: the encoder sees
  only what moves (objectives still read the frames for their targets).
- Masking: mask_mode "visible_only" (default) encodes the visible tokens only; "mask_token" encodes
  every token, a hidden one as a learned mask token (SimMIM-style: the encoder sees as many tokens
  in pretraining as in fine-tuning; hidden pixels are still kept out of the stem).
- Position embedding "sincos" (VideoMAE's fixed table over the flattened grid) or "learned"; both
  are defined on the grid of (num_frames, img_size) and resampled (bicubic in space, linear in
  time) for any other input.
- Prefix tokens: an optional cls token (joint, divided: the TimeSformer / ViViT layout; it is the
  pooled output) and, for sparse, `num_global_tokens` global tokens. A position of a prefix token
  is folded into the token itself (a constant sum).
- factorised = ViViT model 2: `depth` spatial blocks within each frame, a LayerNorm, each frame's
  mean token into `temporal_depth` (default depth // 3) joint blocks over frames. Its grid
  tokens are the spatial encoder's tokens plus the temporal encoder's update of their frame, so
  dense heads see temporal context. Its `return_layers` indices run over the spatial blocks and
  then the temporal ones (these return (B, t, D)).
- Masks: visible-only (base.py). Joint and sparse take any mask hiding the same number of tokens
  per row; divided, factorised and axial need a tube mask and raise ValueError otherwise.
- final_norm: "tokens" (LayerNorm on the output tokens), "pooled" (LayerNorm on the pooled
  vector only, VideoMAE's fc_norm) or "none" (HF VideoMAEModel's mean-pooling layout).
- `flops(T, H, W, mask=None)`: forward FLOPs for one clip (2 per multiply-add) of the patch
  embedding, every Linear and the attention matmuls; norms, softmax, activations and adds are
  left out. It matches torch.utils.flop_counter.FlopCounterMode (tests/models/test_models_vit.py).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.layers import trunc_normal_

from pipeline.models.attention import MIXERS, JointMixer, TokenLayout
from pipeline.host import read_on_host
from pipeline.models.base import BackboneOutput, VideoBackbone
from pipeline.models.layers import (Block, ConvStem, TubeletEmbed, expand_keep, frame_differences,
                                    resize_pos_grid, sincos_table)
from pipeline.models.registry import register_model

SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
ATTENTIONS = ("joint", "divided", "factorised", "axial", "sparse")
TUBE_ONLY = ("divided", "factorised", "axial")
# the generic test runs models wider than tiny at their real width with one or two blocks
TEST_OVERRIDES = {"small": dict(depth=2), "base": dict(depth=1), "large": dict(depth=1), "huge": dict(depth=1)}


class VideoViT(VideoBackbone):
    def __init__(self, name: str = "vit_tiny_joint", attention: str = "joint", embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, num_frames: int = 16,
                 img_size: int = 224, patch_size: tuple[int, int, int] = (2, 16, 16), in_chans: int = 3,
                 qkv_bias: bool = True, pos_embed: str = "sincos", cls_token: bool = False,
                 final_norm: str = "tokens", norm_eps: float = 1e-6, act: str = "gelu",
                 drop_path_rate: float = 0.0, temporal_depth: int | None = None,
                 window: tuple[int, int, int] | None = None, num_global_tokens: int | None = None,
                 stem: str = "tubelet", input_transform: str = "none", mask_mode: str = "visible_only"):
        super().__init__()
        patch_size = tuple(patch_size)
        self.config = dict(name=name, attention=attention, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, num_frames=num_frames,
                           img_size=img_size, patch_size=list(patch_size), in_chans=in_chans,
                           qkv_bias=qkv_bias, pos_embed=pos_embed, cls_token=cls_token,
                           final_norm=final_norm, norm_eps=norm_eps, act=act,
                           drop_path_rate=drop_path_rate, temporal_depth=temporal_depth,
                           window=list(window) if window else None, num_global_tokens=num_global_tokens,
                           stem=stem, input_transform=input_transform, mask_mode=mask_mode)
        _check_arguments(self.config)
        self.attention = attention
        self.mask_mode = mask_mode
        self.requires_tube_mask = attention in TUBE_ONLY and mask_mode == "visible_only"
        self.embed_dim, self.num_frames, self.img_size = embed_dim, num_frames, img_size
        self.patch_size, self.in_chans, self.final_norm = patch_size, in_chans, final_norm
        self.input_transform = input_transform
        self.motion_input = input_transform == "frame_diff"
        self.grad_checkpointing = False
        self.base_grid = self.token_grid(num_frames, img_size, img_size)

        self.patch_embed = (ConvStem if stem == "conv" else TubeletEmbed)(in_chans, embed_dim, patch_size)
        num_tokens = math.prod(self.base_grid)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        else:
            self.register_buffer("pos_embed", sincos_table(num_tokens, embed_dim)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if mask_mode == "mask_token" else None
        globals_ = self.config["num_global_tokens"] if attention == "sparse" else 0
        self.global_tokens = nn.Parameter(torch.zeros(1, globals_, embed_dim)) if globals_ else None
        self.num_prefix = int(cls_token) + globals_

        mixer_kind = "spatial" if attention == "factorised" else attention
        extra = {"window": tuple(window or (2, 7, 7))} if attention == "sparse" else {}
        total_depth = depth + (self._temporal_depth() if attention == "factorised" else 0)
        rates = [drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        block = partial(Block, embed_dim, mlp_ratio=mlp_ratio, act=act, norm_eps=norm_eps)
        mixer = partial(MIXERS[mixer_kind], embed_dim, num_heads, qkv_bias=qkv_bias, norm_eps=norm_eps, **extra)
        self.blocks = nn.ModuleList(block(mixer(), drop_path=rates[i]) for i in range(depth))
        if attention == "factorised":
            self.spatial_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
            temporal = partial(JointMixer, embed_dim, num_heads, qkv_bias=qkv_bias, norm_eps=norm_eps)
            self.temporal_blocks = nn.ModuleList(
                block(temporal(), drop_path=rates[depth + i]) for i in range(self._temporal_depth()))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm != "none" else None
        self.apply(_init_weights)
        if stem == "conv":  # PyTorch's fan-in init: trunc-normal(0.02) would shrink the signal stage by stage
            for conv in self.patch_embed.convs:
                conv.reset_parameters()
        for p in (self.pos_embed, self.cls_token, self.global_tokens, self.mask_token):
            if isinstance(p, nn.Parameter):
                trunc_normal_(p, std=0.02)

    def _temporal_depth(self) -> int:
        td = self.config["temporal_depth"]
        return max(1, self.config["depth"] // 3) if td is None else td

    def freeze_unused(self, *, masked: bool, pooled: bool) -> None:
        super().freeze_unused(masked=masked, pooled=pooled)
        if self.final_norm == "pooled" and not pooled:  # fc_norm: only the pooled vector passes it
            self.norm.requires_grad_(False)

    # -- positions and masks ------------------------------------------------------------------

    def position_embedding(self, grid: tuple[int, int, int]) -> Tensor:
        return resize_pos_grid(self.pos_embed, self.base_grid, grid)

    def remap_state_dict(self, state: dict[str, Tensor], source_config: dict) -> dict[str, Tensor]:
        """Resample a learned position table saved for another frame count / resolution."""
        pos = state.get("pos_embed")
        if pos is None or pos.shape == self.pos_embed.shape:
            return state
        src = self.token_grid(source_config["num_frames"], source_config["img_size"], source_config["img_size"])
        return {**state, "pos_embed": resize_pos_grid(pos, src, self.base_grid)}

    def layout(self, mask: Tensor | None, grid: tuple[int, int, int], batch: int) -> TokenLayout:
        """Validate `mask` (B, N) bool, True = hidden, and describe the tokens that stay."""
        if mask is None:
            return TokenLayout(grid, self.num_prefix)
        n = math.prod(grid)
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, n):
            raise ValueError(f"mask: expected a ({batch}, {n}) bool tensor for the {grid[0]}x{grid[1]}x{grid[2]} "
                             f"token grid, got {tuple(mask.shape)} {mask.dtype}")
        hidden = mask.sum(1)
        checks = [hidden.min(), hidden.max()]
        if self.requires_tube_mask:
            checks.append((mask.view(batch, grid[0], -1) != mask.view(batch, grid[0], -1)[:, :1]).any())
        lowest, highest, *not_tube = read_on_host(torch.stack([c.long() for c in checks]))  # one host read
        if lowest != highest:
            raise ValueError(f"mask: visible-only encoding needs the same number of hidden tokens in every row, "
                             f"got {hidden.tolist()[:8]}")
        if lowest == 0:
            return TokenLayout(grid, self.num_prefix)
        if lowest == n:
            raise ValueError("mask: hides every token")
        if not_tube and not_tube[0]:
            raise ValueError(f"mask: {self.config['name']} ({self.attention} attention) encodes visible tokens "
                             f"only and needs a tube mask (the same positions hidden in every frame)")
        # ascending grid indices of the visible tokens (a stable sort puts them first, in order)
        kept = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n - lowest]
        return TokenLayout(grid, self.num_prefix, kept)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, video: Tensor, mask: Tensor | None = None,
                return_layers: tuple[int, ...] = ()) -> BackboneOutput:
        if video.dim() != 5 or video.shape[1] != self.in_chans:
            raise ValueError(f"video: expected (B, {self.in_chans}, T, H, W), got {tuple(video.shape)}")
        batch = video.shape[0]
        grid = self.token_grid(*video.shape[2:])
        layout = self.layout(mask, grid, batch)
        keep = None if layout.kept is None else ~mask.view(batch, *grid)
        pixels = video
        if self.input_transform == "frame_diff":  # hidden pixels zeroed first: none reaches a visible difference
            shown = video if keep is None else video * expand_keep(keep, video.shape[2:], video.dtype)
            pixels = frame_differences(shown)
        x = self.patch_embed(pixels, keep)
        if self.mask_token is not None and layout.kept is not None:  # every token encoded, hidden ones as the token
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
            layout = TokenLayout(grid, self.num_prefix)
        x = x + self.position_embedding(grid).to(video.dtype)
        if layout.kept is not None:
            x = x.gather(1, layout.kept[..., None].expand(-1, -1, x.shape[-1]))
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.global_tokens) if t is not None]
        x = torch.cat([*prefix, x], 1) if prefix else x
        wanted = self._layer_indices(return_layers)
        x, layers = self._run_blocks(x, layout, wanted)
        if self.final_norm == "tokens":
            x = self.norm(x)
        tokens = x[:, self.num_prefix:]
        pooled = x[:, 0] if self.cls_token is not None else tokens.mean(1)
        if self.final_norm == "pooled":
            pooled = self.norm(pooled)
        return BackboneOutput(tokens=tokens, grid=grid, pooled=pooled, mask=None if keep is None else mask,
                              layers=tuple(layers[i] for i in wanted))

    def _layer_indices(self, return_layers: tuple[int, ...]) -> list[int]:
        total = len(self.blocks) + len(getattr(self, "temporal_blocks", ()))
        for i in return_layers:
            if not -total <= i < total:
                raise ValueError(f"return_layers: index {i} out of range for {total} blocks")
        return [i % total for i in return_layers]

    def _block(self, blk: Block, x: Tensor, layout: TokenLayout) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, layout, use_reentrant=False)
        return blk(x, layout)

    def _run_blocks(self, x: Tensor, layout: TokenLayout, wanted: list[int]) -> tuple[Tensor, dict[int, Tensor]]:
        layers = {}
        for i, blk in enumerate(self.blocks):
            x = self._block(blk, x, layout)
            if i in wanted:
                layers[i] = x[:, layout.num_prefix:]
        if self.attention != "factorised":
            return x, layers
        b, _, d = x.shape
        spatial = self.spatial_norm(x).view(b, layout.grid[0], layout.frame_tokens, d)
        frames_in = spatial.mean(2)
        frames, frame_layout = frames_in, TokenLayout((layout.grid[0], 1, 1))
        for i, blk in enumerate(self.temporal_blocks, start=len(self.blocks)):
            frames = self._block(blk, frames, frame_layout)
            if i in wanted:
                layers[i] = frames
        return (spatial + (frames - frames_in)[:, :, None]).flatten(1, 2), layers

    # -- cost ---------------------------------------------------------------------------------

    def flops(self, num_frames: int, height: int, width: int, mask: Tensor | None = None) -> int:
        """Forward FLOPs for one clip; `mask` (1, N) counts visible-only encoding (mask_token: every token)."""
        grid = self.token_grid(num_frames, height, width)
        layout = self.layout(None if self.mask_token is not None else mask, grid, 1)
        total = self.patch_embed.flops(grid) + sum(blk.flops(layout) for blk in self.blocks)
        if self.attention == "factorised":
            frame_layout = TokenLayout((grid[0], 1, 1))
            total += sum(blk.flops(frame_layout) for blk in self.temporal_blocks)
        return total


def _check_arguments(cfg: dict) -> None:
    """One-line ValueErrors naming the argument, before any weights are allocated."""
    attention = cfg["attention"]
    if attention not in ATTENTIONS:
        raise ValueError(f"attention: must be one of {list(ATTENTIONS)}, got {attention!r}")
    choices = {"pos_embed": ("sincos", "learned"), "final_norm": ("tokens", "pooled", "none"),
               "stem": ("tubelet", "conv"), "input_transform": ("none", "frame_diff"),
               "mask_mode": ("visible_only", "mask_token")}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise ValueError(f"{key}: must be one of {list(allowed)}, got {cfg[key]!r}")
    if len(cfg["patch_size"]) != 3 or min(cfg["patch_size"]) < 1:
        raise ValueError(f"patch_size: expected three positive sizes (pt, ph, pw), got {cfg['patch_size']}")
    if cfg["cls_token"] and attention not in ("joint", "divided"):
        raise ValueError(f"cls_token: supported by joint and divided attention, not {attention}")
    only_for = {"temporal_depth": "factorised", "window": "sparse", "num_global_tokens": "sparse"}
    for key, owner in only_for.items():
        if cfg[key] is not None and attention != owner:
            raise ValueError(f"{key}: applies to {owner} attention only, not {attention}")
    if attention == "sparse":
        cfg["num_global_tokens"] = 8 if cfg["num_global_tokens"] is None else cfg["num_global_tokens"]
        if cfg["num_global_tokens"] < 1:
            raise ValueError("num_global_tokens: sparse attention needs >= 1 (windows talk only through them)")
    if cfg["depth"] < 1 or (cfg["temporal_depth"] is not None and cfg["temporal_depth"] < 1):
        raise ValueError(f"depth: must be >= 1, got {cfg['depth']} (temporal_depth {cfg['temporal_depth']})")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _factory(size: str, attention: str):
    name = f"vit_{size}_{attention}"

    def make(**overrides) -> VideoViT:
        return VideoViT(**{"name": name, "attention": attention, **SIZES[size], **overrides})

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"ViT-{size[0].upper()} video encoder with {attention} attention."
    return make


def _register_all() -> None:
    for size in SIZES:
        for attention in ATTENTIONS:
            register_model(_factory(size, attention), test_overrides=TEST_OVERRIDES.get(size))


_register_all()
