"""MViTv2-style video backbone: pooling attention over a 3D token grid that shrinks stage by stage.

    from pipeline.models import create_model
    model = create_model("mvit_small")             # MViTv2-S, 16x224x224 clips
    out = model(video, mask=mask)                  # video (B, 3, 16, 224, 224), mask (B, 8*56*56) bool
    out.tokens.shape, out.grid                     # (B, 8*7*7, 768), (8, 7, 7); out.pooled (B, 768)
    model.flops(16, 224, 224)                      # FLOPs of one clip (see _multiscale_common.py)

Architecture (Li et al., "MViTv2", CVPR 2022, the video variant):
- Stem: Conv3d kernel 3x7x7, stride 2x4x4, padding 1x3x3. The stride is `patch_size` for masks.
- Four stages. The first block of stages 1-3 pools Q with stride (1, 2, 2), which halves h and w,
  and doubles width and heads (widening happens in the attention's qkv; the skip path is
  projected and max-pooled to match). K/V are pooled with a stride that starts at (1, 8, 8) and is
  divided by the Q stride at every transition, so stage 3 keeps full K/V resolution. Every
  block also runs the pooling conv (depthwise 3x3x3 + LayerNorm) at stride 1 where no stride is set.
- Residual pooling: the pooled Q is added to the attention output.
- Decomposed relative positions: one table per axis (t, h, w) of head-dim vectors; the logit
  for (query i, key j) gets q_i . (R_t[dt] + R_h[dh] + R_w[dw]). Offsets along a pooled axis are
  measured at the finer resolution. Tables are sized for the default clip and linearly resized
  when a clip gives another grid, so any divisible input size works.
- No cls token: `pooled` is the mean of the final tokens.
Attention is F.scaled_dot_product_attention with the relative-position term as an additive
float mask (on GPU that selects the memory-efficient kernel; flash kernels take no bias).

Masking: mask_mode "mask_token" - hidden tokens are replaced by a learned token after the stem.
The stem's 7x7 kernel overlaps neighbouring patches, so visible tokens still see pixels of hidden
neighbours at their borders (as in MaskFeat); hide pixels upstream if that matters.
`return_layers` are stage indices 0-3. Sizes: mvit_small (MViTv2-S: depths 1-2-11-2),
mvit_base (MViTv2-B: 2-3-16-3, 32 frames), mvit_tiny (1-1-2-1, width 32: a test-size config).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from pipeline.models.backbones._multiscale_common import (Grid, MultiscaleBackbone,
                                                          drop_path_rates, register_sizes)


def pooled_grid(grid: Grid, kernel: Grid, stride: Grid) -> Grid:
    """Output grid of a pooling with padding kernel // 2 (what nn.Conv3d/MaxPool3d compute)."""
    return tuple((g + 2 * (k // 2) - k) // s + 1 for g, k, s in zip(grid, kernel, stride))


def relative_offsets(q_size: int, k_size: int, device: torch.device) -> Tensor:
    """(q_size, k_size) table rows for each query/key pair along one axis.

    The coarser axis is scaled onto the finer one so a pooled axis keeps true distances; row 0
    is the most negative offset and rows stay below 2 * max(q_size, k_size) - 1.
    """
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, device=device)[:, None] * q_ratio
    k_pos = torch.arange(k_size, device=device)[None, :] * k_ratio
    return (q_pos - k_pos + (k_size - 1) * k_ratio).long()


def axis_table(table: Tensor, q_size: int, k_size: int) -> Tensor:
    """(q_size, k_size, head_dim): the table, linearly resized if this grid needs another length."""
    length = 2 * max(q_size, k_size) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.T[None], size=length, mode="linear", align_corners=False)[0].T
    return table[relative_offsets(q_size, k_size, table.device)]


def decomposed_position_bias(q: Tensor, q_grid: Grid, k_grid: Grid,
                             tables: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """(B, heads, Nq, Nk) additive logits: q . R_t + q . R_h + q . R_w, broadcast over the key grid."""
    batch, heads, _, head_dim = q.shape
    q5 = q.reshape(batch, heads, *q_grid, head_dim)
    r_t, r_h, r_w = (axis_table(t, qs, ks) for t, qs, ks in zip(tables, q_grid, k_grid))
    by_t = torch.einsum("bnthwc,tkc->bnthwk", q5, r_t)
    by_h = torch.einsum("bnthwc,hkc->bnthwk", q5, r_h)
    by_w = torch.einsum("bnthwc,wkc->bnthwk", q5, r_w)
    bias = by_t[..., :, None, None] + by_h[..., None, :, None] + by_w[..., None, None, :]
    return bias.reshape(batch, heads, q.shape[2], math.prod(k_grid))


class HeadPool(nn.Module):
    """Depthwise Conv3d pooling of (B, heads, N, head_dim) tokens on their grid, then LayerNorm."""

    def __init__(self, head_dim: int, kernel: Grid, stride: Grid) -> None:
        super().__init__()
        self.conv = nn.Conv3d(head_dim, head_dim, kernel, stride, tuple(k // 2 for k in kernel),
                              groups=head_dim, bias=False)
        self.norm = nn.LayerNorm(head_dim)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        batch, heads, _, head_dim = x.shape
        volume = x.reshape(batch * heads, *grid, head_dim).permute(0, 4, 1, 2, 3)
        volume = self.conv(volume)
        out_grid = tuple(volume.shape[2:])
        x = volume.flatten(2).transpose(1, 2).reshape(batch, heads, -1, head_dim)
        return self.norm(x), out_grid


class PoolingAttention(nn.Module):
    """Multi-head attention with pooled Q/K/V, residual pooling and decomposed relative positions."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: Grid, kv_stride: Grid,
                 pool_kernel: Grid, table_grid: Grid) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pool_kernel, self.q_stride, self.kv_stride = pool_kernel, q_stride, kv_stride
        head_dim = dim_out // num_heads
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.pool_q = HeadPool(head_dim, pool_kernel, q_stride)
        self.pool_k = HeadPool(head_dim, pool_kernel, kv_stride)
        self.pool_v = HeadPool(head_dim, pool_kernel, kv_stride)
        q_grid, kv_grid = self.pooled_grids(table_grid)
        lengths = [2 * max(q, k) - 1 for q, k in zip(q_grid, kv_grid)]
        self.rel_pos_t = nn.Parameter(trunc_normal_(torch.empty(lengths[0], head_dim), std=0.02))
        self.rel_pos_h = nn.Parameter(trunc_normal_(torch.empty(lengths[1], head_dim), std=0.02))
        self.rel_pos_w = nn.Parameter(trunc_normal_(torch.empty(lengths[2], head_dim), std=0.02))

    def pooled_grids(self, grid: Grid) -> tuple[Grid, Grid]:
        """(query grid, key/value grid) for an input grid."""
        return (pooled_grid(grid, self.pool_kernel, self.q_stride),
                pooled_grid(grid, self.pool_kernel, self.kv_stride))

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, q_grid = self.pool_q(q, grid)
        k, kv_grid = self.pool_k(k, grid)
        v, _ = self.pool_v(v, grid)
        bias = decomposed_position_bias(q, q_grid, kv_grid,
                                        (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out + q  # residual pooling
        return self.proj(out.transpose(1, 2).reshape(batch, q.shape[2], -1)), q_grid


class MultiScaleBlock(nn.Module):
    """Pre-norm block: pooling attention (may pool Q and widen) + MLP; the skip path is projected
    (when widening) and max-pooled (when Q is strided) to match."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: Grid, kv_stride: Grid,
                 pool_kernel: Grid, table_grid: Grid, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.dim, self.dim_out, self.mlp_hidden = dim, dim_out, int(dim_out * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PoolingAttention(dim, dim_out, num_heads, q_stride, kv_stride, pool_kernel,
                                     table_grid)
        self.skip_proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        skip_kernel = tuple(k if s > 1 else 1 for k, s in zip(pool_kernel, q_stride))
        self.skip_pool = (nn.MaxPool3d(skip_kernel, q_stride, tuple(k // 2 for k in skip_kernel))
                          if max(q_stride) > 1 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out)
        self.mlp = Mlp(dim_out, self.mlp_hidden)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        x_norm = self.norm1(x)
        attended, out_grid = self.attn(x_norm, grid)
        skip = self.skip_proj(x_norm) if self.skip_proj is not None else x
        if self.skip_pool is not None:
            volume = skip.transpose(1, 2).reshape(skip.shape[0], -1, *grid)
            skip = self.skip_pool(volume).flatten(2).transpose(1, 2)
        x = skip + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x))), out_grid

    def flops(self, grid: Grid) -> tuple[int, Grid]:
        q_grid, kv_grid = self.attn.pooled_grids(grid)
        n_in, n_q, n_kv = math.prod(grid), math.prod(q_grid), math.prod(kv_grid)
        c_in, c = self.dim, self.dim_out
        macs = (n_in * c_in * 3 * c                                      # qkv
                + c * math.prod(self.attn.pool_kernel) * (n_q + 2 * n_kv)  # depthwise pooling
                + c * n_q * sum(kv_grid)                                 # relative positions
                + 2 * c * n_q * n_kv                                     # q k^T and attn v
                + n_q * c * c                                            # proj
                + (n_in * c_in * c if self.skip_proj is not None else 0)
                + 2 * n_q * c * self.mlp_hidden)
        return 2 * macs, q_grid


class MViT(MultiscaleBackbone):
    """MViTv2 video backbone; see the module docstring. Constructor arguments are the config."""

    def __init__(self, depths: tuple[int, ...] = (1, 2, 11, 2), stem_dim: int = 96,
                 num_heads: int = 1, num_frames: int = 16, img_size: int = 224, in_chans: int = 3,
                 patch_kernel: Grid = (3, 7, 7), patch_stride: Grid = (2, 4, 4),
                 pool_kernel: Grid = (3, 3, 3), q_stride: Grid = (1, 2, 2),
                 kv_stride: Grid = (1, 8, 8), mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2) -> None:
        for key, value in (("patch_kernel", patch_kernel), ("pool_kernel", pool_kernel)):
            if any(k % 2 == 0 for k in value):
                raise ValueError(f"{key}: kernel sizes must be odd (padding is kernel // 2), got {value}")
        if not depths or min(depths) < 1:
            raise ValueError(f"depths: every stage needs at least one block, got {depths}")
        if stem_dim % num_heads:
            raise ValueError(f"stem_dim: {stem_dim} is not divisible by num_heads={num_heads}")
        super().__init__(in_chans=in_chans, stem_dim=stem_dim, patch_kernel=patch_kernel,
                         patch_stride=patch_stride, patch_padding=tuple(k // 2 for k in patch_kernel),
                         stem_norm=False, num_frames=num_frames, img_size=img_size)
        grid = self.token_grid(num_frames, img_size, img_size)
        rates = iter(drop_path_rates(sum(depths), drop_path_rate))
        kv = tuple(kv_stride)
        stages, stage_dims = [], [stem_dim * 2 ** i for i in range(len(depths))]
        for stage_index, depth in enumerate(depths):
            dim, heads = stage_dims[stage_index], num_heads * 2 ** stage_index
            if stage_index > 0:
                kv = tuple(max(k // s, 1) for k, s in zip(kv, q_stride))
            blocks = []
            for block_index in range(depth):
                transition = stage_index > 0 and block_index == 0
                block = MultiScaleBlock(dim // 2 if transition else dim, dim, heads,
                                        tuple(q_stride) if transition else (1, 1, 1), kv,
                                        tuple(pool_kernel), grid, mlp_ratio, next(rates))
                grid = block.attn.pooled_grids(grid)[0]
                blocks.append(block)
            stages.append(blocks)
        self.set_stages(stages, stage_dims)


# registered name -> the constructor arguments that differ from the defaults
_MVIT_SIZES = {
    "mvit_tiny": dict(depths=(1, 1, 2, 1), stem_dim=32, drop_path_rate=0.1),
    "mvit_small": dict(depths=(1, 2, 11, 2), stem_dim=96, drop_path_rate=0.2),
    "mvit_base": dict(depths=(2, 3, 16, 3), stem_dim=96, num_frames=32, drop_path_rate=0.3),
}

register_sizes(MViT, _MVIT_SIZES)
