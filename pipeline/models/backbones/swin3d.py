"""Video-Swin-style backbone: 3D shifted-window attention with patch merging between stages.

    from pipeline.models import create_model
    model = create_model("swin3d_tiny")            # Video Swin-T, 32x224x224 clips, window 8x7x7
    out = model(video, mask=mask)                  # video (B, 3, 32, 224, 224), mask (B, 16*56*56) bool
    out.tokens.shape, out.grid                     # (B, 16*7*7, 768), (16, 7, 7); out.pooled (B, 768)
    model.flops(32, 224, 224)                      # FLOPs of one clip (see _multiscale_common.py)

Architecture (Liu et al., "Video Swin Transformer", CVPR 2022):
- Patch partition: Conv3d kernel = stride = (2, 4, 4) + LayerNorm; `patch_size` for masks.
- Four stages of blocks alternating regular and shifted 3D windows (shift = window // 2). Shifted
  blocks roll the grid cyclically and mask attention so tokens only attend within their true
  (non-cyclic) window; grids that are not a multiple of the window are zero-padded at the end
  and padded positions are masked out as keys too (the reference lets them take part).
- Relative position bias: a learned (2Wd-1)(2Wh-1)(2Ww-1) x heads table, indexed by the 3D offset.
- Patch merging at the start of stages 1-3: 2x2 spatial neighbours concatenated (4C), LayerNorm,
  Linear to 2C; time is not merged.
- Windows adapt to the grid: on an axis the grid does not exceed, the window shrinks to the grid
  and that axis is not shifted (`effective_window`). Masks and bias indices are computed for the
  actual grid on every call, so any divisible input size works.
Attention is F.scaled_dot_product_attention with bias (+ window mask) as an additive float mask;
for a shifted block the (windows x heads) axes are folded so the mask is shared across the batch.

Masking: mask_mode "mask_token" - hidden tokens are replaced by a learned token right after the
patch partition (which does not overlap patches). `return_layers` are stage indices 0-3; a stage's
output is taken after its blocks, before the next stage's merging. Sizes (paper configs):
swin3d_tiny (96, 2-2-6-2), swin3d_small (96, 2-2-18-2), swin3d_base (128, 2-2-18-2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from pipeline.models.backbones._multiscale_common import (Grid, MultiscaleBackbone,
                                                          drop_path_rates, register_sizes)

# Logit added where attention is forbidden: exp() underflows to exactly 0 in fp32/bf16/fp16 while
# a fully masked row (a padded query) stays finite and never produces NaN.
MASK_VALUE = -1e4


def effective_window(grid: Grid, window: Grid, shift: Grid) -> tuple[Grid, Grid]:
    """(window, shift) actually used on `grid`: an axis the window covers gets window = grid, shift 0."""
    used_window = tuple(min(w, g) for w, g in zip(window, grid))
    used_shift = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
    return used_window, used_shift


def padded_grid(grid: Grid, window: Grid) -> Grid:
    return tuple(math.ceil(g / w) * w for g, w in zip(grid, window))


def window_partition(x: Tensor, window: Grid) -> Tensor:
    """(B, D, H, W, C) with each axis a multiple of the window -> (B, windows, wd*wh*ww, C)."""
    batch, d, h, w, channels = x.shape
    wd, wh, ww = window
    x = x.view(batch, d // wd, wd, h // wh, wh, w // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, -1, wd * wh * ww, channels)


def window_reverse(windows: Tensor, window: Grid, grid: Grid) -> Tensor:
    """Inverse of window_partition: (B, windows, wd*wh*ww, C) -> (B, D, H, W, C)."""
    batch, channels = windows.shape[0], windows.shape[-1]
    (wd, wh, ww), (d, h, w) = window, grid
    x = windows.view(batch, d // wd, h // wh, w // ww, wd, wh, ww, channels)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, d, h, w, channels)


def window_attention_mask(grid: Grid, window: Grid, shift: Grid,
                          device: torch.device | None = None) -> Tensor | None:
    """(windows, Wn, Wn) additive mask for the rolled, padded grid; None when nothing is forbidden.

    Every position is labelled with the true shifted window it belongs to, (p - shift) // window
    per axis, in the original coordinates; padding is labelled -1. The labels are then rolled and
    partitioned exactly like the features, and a query may see a key only with the same label.
    """
    padded = padded_grid(grid, window)
    if not any(shift) and padded == tuple(grid):
        return None
    labels = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    for axis, (size, g, w, s) in enumerate(zip(padded, grid, window, shift)):
        pos = torch.arange(size, device=device)
        segment = torch.div(pos - s, w, rounding_mode="floor") + 1  # the window before 0 is -1
        view = [1, 1, 1]
        view[axis] = size
        labels = labels * (size // w + 1) + segment.view(view)
        valid = valid & (pos < g).view(view)
    labels = torch.where(valid, labels, -1)
    if any(shift):
        labels = torch.roll(labels, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    labels = window_partition(labels[None, ..., None], window)[0, ..., 0]
    forbidden = (labels[:, :, None] != labels[:, None, :]) | (labels[:, None, :] < 0)
    return torch.zeros(forbidden.shape, device=device).masked_fill(forbidden, MASK_VALUE)


def relative_position_index(window: Grid, table_window: Grid, device: torch.device) -> Tensor:
    """(Wn, Wn) rows of a bias table built for `table_window` (>= window on every axis)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=device) for w in window),
                                        indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + torch.tensor(
        [w - 1 for w in table_window], device=device)[:, None, None]
    _, th, tw = (2 * w - 1 for w in table_window)
    return (offsets[0] * th + offsets[1]) * tw + offsets[2]


class WindowAttention3d(nn.Module):
    """Multi-head attention inside each 3D window with a relative position bias."""

    def __init__(self, dim: int, num_heads: int, table_window: Grid) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.table_window = table_window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        table_rows = math.prod(2 * w - 1 for w in table_window)
        self.relative_position_bias_table = nn.Parameter(
            trunc_normal_(torch.empty(table_rows, num_heads), std=0.02))

    def forward(self, windows: Tensor, window: Grid, mask: Tensor | None) -> Tensor:
        """windows (B, nW, Wn, C), mask (nW, Wn, Wn) or None -> (B, nW, Wn, C)."""
        batch, num_windows, size, channels = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(batch, num_windows, size, 3, heads, -1)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, Wn, hd)
        index = relative_position_index(window, self.table_window, windows.device)
        bias = self.relative_position_bias_table[index].permute(2, 0, 1)  # (heads, Wn, Wn)
        if mask is None:
            shape, attn_mask = (batch * num_windows, heads, size, -1), bias[None]
        else:  # fold windows into heads: the per-window mask then broadcasts over the batch
            shape = (batch, num_windows * heads, size, -1)
            attn_mask = (bias[None] + mask[:, None]).reshape(1, num_windows * heads, size, size)
        out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                             attn_mask=attn_mask.to(q.dtype))
        out = out.view(batch, num_windows, heads, size, -1).transpose(2, 3)
        return self.proj(out.reshape(batch, num_windows, size, channels))


class SwinBlock3d(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on tokens (B, t*h*w, C)."""

    def __init__(self, dim: int, num_heads: int, window: Grid, shifted: bool, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.dim, self.mlp_hidden = dim, int(dim * mlp_ratio)
        self.window = window
        self.shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, self.mlp_hidden)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        window, shift = effective_window(grid, self.window, self.shift)
        padded = padded_grid(grid, window)
        batch, tokens, channels = x.shape
        volume = self.norm1(x).view(batch, *grid, channels)
        pad = [0, 0]
        for g, p in zip(reversed(grid), reversed(padded)):
            pad += [0, p - g]
        volume = F.pad(volume, pad)
        if any(shift):
            volume = torch.roll(volume, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = window_attention_mask(grid, window, shift, x.device)
        windows = self.attn(window_partition(volume, window), window, mask)
        volume = window_reverse(windows, window, padded)
        if any(shift):
            volume = torch.roll(volume, shifts=shift, dims=(1, 2, 3))
        d, h, w = grid
        attended = volume[:, :d, :h, :w].reshape(batch, tokens, channels)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x))), grid

    def flops(self, grid: Grid) -> tuple[int, Grid]:
        window = effective_window(grid, self.window, self.shift)[0]
        n_padded, c = math.prod(padded_grid(grid, window)), self.dim
        macs = (n_padded * c * 4 * c                        # qkv + proj (computed on padding too)
                + 2 * n_padded * math.prod(window) * c      # q k^T and attn v per window
                + 2 * math.prod(grid) * c * self.mlp_hidden)
        return 2 * macs, grid


class PatchMerging3d(nn.Module):
    """Concatenate 2x2 spatial neighbours (4C), LayerNorm, Linear to 2C; odd sizes are padded."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        batch, _, channels = x.shape
        d, h, w = grid
        volume = F.pad(x.view(batch, d, h, w, channels), (0, 0, 0, w % 2, 0, h % 2))
        volume = torch.cat([volume[:, :, i::2, j::2] for j in (0, 1) for i in (0, 1)], dim=-1)
        out_grid = tuple(volume.shape[1:4])
        return self.reduction(self.norm(volume.reshape(batch, -1, 4 * channels))), out_grid

    def flops(self, grid: Grid) -> tuple[int, Grid]:
        out_grid = (grid[0], math.ceil(grid[1] / 2), math.ceil(grid[2] / 2))
        return 2 * math.prod(out_grid) * 4 * self.dim * 2 * self.dim, out_grid


class SwinTransformer3d(MultiscaleBackbone):
    """Video Swin backbone; see the module docstring. Constructor arguments are the config."""

    def __init__(self, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), stem_dim: int = 96,
                 window_size: Grid = (8, 7, 7), patch_size: Grid = (2, 4, 4), num_frames: int = 32,
                 img_size: int = 224, in_chans: int = 3, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1) -> None:
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads: need one per stage ({len(depths)}), got {num_heads}")
        for index, heads in enumerate(num_heads):
            if (stem_dim * 2 ** index) % heads:
                raise ValueError(f"num_heads[{index}]: {heads} does not divide the stage width "
                                 f"{stem_dim * 2 ** index}")
        super().__init__(in_chans=in_chans, stem_dim=stem_dim, patch_kernel=patch_size,
                         patch_stride=patch_size, patch_padding=(0, 0, 0), stem_norm=True,
                         num_frames=num_frames, img_size=img_size)
        rates = iter(drop_path_rates(sum(depths), drop_path_rate))
        stages = []
        for index, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = stem_dim * 2 ** index
            blocks = [PatchMerging3d(dim // 2)] if index > 0 else []
            blocks += [SwinBlock3d(dim, heads, tuple(window_size), shifted=i % 2 == 1,
                                   mlp_ratio=mlp_ratio, drop_path=next(rates)) for i in range(depth)]
            stages.append(blocks)
        self.set_stages(stages, [stem_dim * 2 ** i for i in range(len(depths))])


# registered name -> the constructor arguments that differ from the defaults
_SWIN_SIZES = {
    "swin3d_tiny": dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), stem_dim=96,
                        drop_path_rate=0.1),
    "swin3d_small": dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), stem_dim=96,
                         drop_path_rate=0.2),
    "swin3d_base": dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), stem_dim=128,
                        drop_path_rate=0.3),
}

register_sizes(SwinTransformer3d, _SWIN_SIZES)
