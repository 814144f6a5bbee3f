"""Shared transformer layers for the video backbones. This API is kept stable for other backbones.

    from pipeline.models.layers import Attention, Block, ConvStem, TubeletEmbed, resize_pos_grid
    embed = TubeletEmbed(in_chans=3, dim=384, patch_size=(2, 16, 16))
    tokens = embed(video)                       # (B, C, T, H, W) -> (B, t*h*w, 384), (t, h, w) order
    stem = ConvStem(in_chans=3, dim=384, patch_size=(2, 16, 16))
    tokens = stem(video, keep=None)             # same grid; keep (B, t, h, w) bool = visible tubelets
    attn = Attention(dim=384, num_heads=6)
    y = attn(tokens)                            # or attn(tokens, attn_mask=(B, 1, N, N) bool)

What lives here:
- `TubeletEmbed(in_chans, dim, patch_size)`: a Conv3d with kernel = stride = tubelet; `flops(grid)`.
- `ConvStem(in_chans, dim, patch_size)`: the same token grid from a few overlapping 3x3x3 convs
  (channel LayerNorm + GELU between), stride 2 in space per stage; `keep` confines each visible
  token to visible pixels for masked encoding. `flops(grid)`.
- `frame_differences(video)`: x_t - x_(t-1) per frame (frame 0 gets frame 1's difference).
- `expand_keep(keep, size, dtype)`: a (B, t, h, w) visible-tubelet map as a 0/1 pixel mask.
- `Attention(dim, num_heads, qkv_bias)`: fused qkv Linear -> F.scaled_dot_product_attention
  (flash / memory-efficient kernels on GPU) -> proj. `split_heads(x)` / `merge_heads(o)` let a
  caller route queries and keys itself (windows, global tokens). `flops(groups, q_len, k_len)`.
- `Block(dim, mixer, mlp_ratio, act, norm_eps, drop_path)`: the one pre-norm block structure:
  `x + drop_path(mixer(x, layout))`, then `x + drop_path(mlp(norm2(x)))`; `flops(layout)`. The mixer (an
  attention variant, pipeline/models/attention.py) owns its pre-norm(s) and returns the update.
- `sincos_table(n, dim)`: VideoMAE's fixed 1-D sinusoid table over the flattened token index.
- `resize_pos_grid(pos, old_grid, new_grid)`: position table resampling, bicubic over (h, w) and
  linear over t; used at forward time for another input size and on checkpoint load.
- `same_group_mask(ids)`: (B, n) group ids -> (B, 1, n, n) "may attend" mask for SDPA.
- `linear_flops(n, d_in, d_out)`: forward FLOPs of a Linear on n tokens (2 per multiply-add).
- `ACTIVATIONS`: "gelu" (exact) and "gelu_tanh" (the tanh approximation, HF's gelu_fast/gelu_new).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module] | partial] = {
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
}


def linear_flops(n: int, d_in: int, d_out: int) -> int:
    return 2 * n * d_in * d_out


class TubeletEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, video: Tensor, keep: Tensor | None = None) -> Tensor:
        """`keep` is accepted for ConvStem's interface; a tubelet only ever sees its own pixels."""
        return self.proj(video).flatten(2).transpose(1, 2).contiguous()

    def flops(self, grid: tuple[int, int, int]) -> int:
        t, h, w = grid
        kernel = self.proj.in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        return linear_flops(t * h * w, kernel, self.proj.out_channels)


class ConvStem(nn.Module):
    """An early-convolution stem in place of the tubelet embedding ("Early Convolutions Help
    Transformers See Better", Xiao et al. 2021, in 3-D): log2(ph) stages of 3x3x3 convs, each
    halving H and W; the middle log2(pt) stages also halve T. Between stages a LayerNorm over
    channels (per position, so no statistics mix positions or clips) and GELU; the last stage
    outputs `dim` channels on the (T/pt, H/ph, W/pw) grid, as TubeletEmbed(patch_size) does.

    Masked encoding: `keep` (B, t, h, w) bool marks visible tubelets. The input and every stage's
    output are zeroed outside them, so a visible token's overlapping receptive field sees zeros,
    never hidden pixels (a dense emulation of sparse convolution, as SparK does for ConvNets).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: tuple[int, int, int]):
        super().__init__()
        pt, ph, pw = self.patch_size = tuple(patch_size)
        stages = ph.bit_length() - 1
        if ph != pw or ph < 2 or ph != 1 << stages or pt & (pt - 1) or pt > ph:
            raise ValueError(f"patch_size: the conv stem needs ph == pw a power of two >= 2 and pt a power of "
                             f"two <= ph, got {list(patch_size)}")
        time_stages = pt.bit_length() - 1
        first_t = max(0, (stages - time_stages) // 2)
        self.strides = [(2 if first_t <= i < first_t + time_stages else 1, 2, 2) for i in range(stages)]
        widths = [max(16, dim >> (stages - 1 - i)) for i in range(stages - 1)] + [dim]
        self.convs = nn.ModuleList(nn.Conv3d(c_in, c_out, 3, stride=s, padding=1)
                                   for c_in, c_out, s in zip([in_chans, *widths], widths, self.strides))
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in widths[:-1])

    def forward(self, video: Tensor, keep: Tensor | None = None) -> Tensor:
        x = video if keep is None else video * expand_keep(keep, video.shape[2:], video.dtype)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.norms):
                x = F.gelu(self.norms[i](x.movedim(1, -1))).movedim(-1, 1)
                if keep is not None:
                    x = x * expand_keep(keep, x.shape[2:], x.dtype)
        return x.flatten(2).transpose(1, 2).contiguous()

    def flops(self, grid: tuple[int, int, int]) -> int:
        size = [g * p for g, p in zip(grid, self.patch_size)]
        total = 0
        for conv, stride in zip(self.convs, self.strides):
            size = [n // s for n, s in zip(size, stride)]
            total += linear_flops(size[0] * size[1] * size[2], conv.in_channels * 27, conv.out_channels)
        return total


def expand_keep(keep: Tensor, size, dtype: torch.dtype) -> Tensor:
    """(B, t, h, w) bool -> (B, 1, *size) 0/1 of `dtype`, each tubelet's value over its pixels."""
    t, h, w = keep.shape[1:]
    scale = (size[0] // t, size[1] // h, size[2] // w)
    out = keep.to(dtype)[:, None]
    for dim, factor in zip((2, 3, 4), scale):
        out = out.repeat_interleave(factor, dim=dim)
    return out


def frame_differences(video: Tensor) -> Tensor:
    """(B, C, T, H, W) -> x_t - x_(t-1) for t >= 1; frame 0 gets frame 1's difference (T >= 2)."""
    if video.shape[2] < 2:
        raise ValueError(f"frame differences need >= 2 frames, got {video.shape[2]}")
    diff = video[:, :, 1:] - video[:, :, :-1]
    return torch.cat([diff[:, :, :1], diff], dim=2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide embed_dim {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, D / heads)."""
        b, n, d = x.shape
        # unbind (not indexing) so the backward stacks the three gradients with one copy
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def merge_heads(self, o: Tensor) -> Tensor:
        """(B, heads, N, D / heads) -> projected (B, N, D)."""
        b, heads, n, hd = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, heads * hd))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.split_heads(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))

    def flops(self, groups: int, q_len: int, k_len: int | None = None) -> int:
        """Projections of the queries' tokens plus QK^T and AV, for `groups` independent attentions."""
        k_len = q_len if k_len is None else k_len
        d = self.proj.in_features
        return groups * (linear_flops(q_len, d, 4 * d) + 4 * q_len * k_len * d)


class Block(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float = 4.0, act: str = "gelu",
                 norm_eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act: must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, round(dim * mlp_ratio), act_layer=ACTIVATIONS[act])
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, layout) -> Tensor:
        x = x + self.drop_path(self.mixer(x, layout))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def flops(self, layout) -> int:
        n = layout.num_prefix + layout.num_kept
        return self.mixer.flops(layout) + 2 * linear_flops(n, self.mlp.fc1.in_features, self.mlp.fc1.out_features)


def sincos_table(n: int, dim: int) -> Tensor:
    """(n, dim): sin at even channels, cos at odd, angle = pos / 10000^(2*(j//2)/dim) (VideoMAE)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / dim)
    return torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


def resize_pos_grid(pos: Tensor, old_grid: tuple[int, int, int], new_grid: tuple[int, int, int]) -> Tensor:
    """(1, t0*h0*w0, D) -> (1, t*h*w, D): bicubic over (h, w), then linear over t."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    t0, h0, w0 = old_grid
    dim = pos.shape[-1]
    if pos.numel() != t0 * h0 * w0 * dim:
        raise ValueError(f"pos_embed: {tuple(pos.shape)} does not hold a {t0}x{h0}x{w0} grid of width {dim}")
    if old_grid == new_grid:
        return pos
    t, h, w = new_grid
    x = pos.float().reshape(t0, h0, w0, dim).permute(0, 3, 1, 2)  # (t0, D, h0, w0)
    if (h0, w0) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    if t0 != t:
        x = x.permute(1, 2, 3, 0).reshape(1, dim * h * w, t0)
        x = F.interpolate(x, size=t, mode="linear", align_corners=False)
        x = x.reshape(dim, h, w, t).permute(3, 0, 1, 2)
    return x.permute(0, 2, 3, 1).reshape(1, t * h * w, dim).to(pos.dtype)


def same_group_mask(ids: Tensor) -> Tensor:
    """(B, n) integer group ids -> (B, 1, n, n) bool: True where query and key share a group."""
    return (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)
