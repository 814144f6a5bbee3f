"""Attention variants ("mixers") that plug into the one block structure of layers.Block.

    from pipeline.models.attention import MIXERS, TokenLayout
    mixer = MIXERS["divided"](dim=384, num_heads=6)
    update = mixer(x, TokenLayout(grid=(8, 14, 14)))      # x: (B, prefix + patch tokens, D)

A mixer owns its pre-norm(s) and returns the residual update for all tokens. The token stream
is `num_prefix` prefix tokens (cls / global tokens) followed by the patch tokens present, in
ascending (t, h, w) grid order. `TokenLayout.kept` lists the grid indices of the patch tokens
present; None means the full grid. Costs below: n tokens, D width, FLOPs of the attention matmuls.

- joint       every token attends to every token: 4 n^2 D. Any mask with an equal visible count
              per row (visible tokens only).
- divided     TimeSformer: temporal attention per spatial position (own norm), then spatial
              attention per frame; a prefix (cls) token joins every frame's spatial attention
              and its updates are averaged over frames: 4 n (t + V) D with V tokens per frame.
              Tube masks only (the visible tokens form a t x V grid).
- axial       attention along T, then H, then W (own norm and weights each): 4 n (t + h + w) D.
              With a tube mask, H and W attention run over each frame's visible tokens with a
              same-column / same-row mask: 4 n (t + 2 V) D.
- sparse      local 3-D windows plus global tokens: a patch token attends to its window and to
              the G global (prefix) tokens; a global token attends to everything:
              4 N (W + G) D + 4 G (N + G) D with W tokens per window. The window is fitted per
              axis to the largest divisor of the grid not above the requested size. Any mask:
              the visible tokens keep their window ids and one masked SDPA call covers all
              (4 (n + G)^2 D; cheaper than dense windows once ~90% is hidden).
- spatial     attention within each frame only: the spatial encoder of the factorised ViViT
              (model 2) in backbones/vit.py, which then runs a joint temporal encoder over
              per-frame tokens. Tube masks only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.layers import Attention, linear_flops, same_group_mask


@dataclass
class TokenLayout:
    grid: tuple[int, int, int]  # the full token grid (t, h, w)
    num_prefix: int = 0  # cls / global tokens ahead of the patch tokens
    kept: Tensor | None = None  # (B, n) ascending grid indices of the patch tokens present
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_kept(self) -> int:
        t, h, w = self.grid
        return t * h * w if self.kept is None else self.kept.shape[1]

    @property
    def frame_tokens(self) -> int:
        """Patch tokens per frame (tube masks keep the same count in every frame)."""
        return self.num_kept // self.grid[0]

    def coords(self) -> Tensor:
        """(B, n, 3) long (t, h, w) coordinates of the patch tokens present."""
        if "coords" not in self._cache:
            t, h, w = self.grid
            idx = self.kept
            self._cache["coords"] = torch.stack([idx // (h * w), (idx // w) % h, idx % w], -1)
        return self._cache["coords"]


def _attend_along(attn: Attention, x: Tensor, grid: tuple[int, int, int], axis: int) -> Tensor:
    """Attention along one axis of a (B, t*h*w, D) token grid, independently for every line."""
    b, _, d = x.shape
    z = x.view(b, *grid, d).movedim(axis + 1, 3)
    shape = z.shape
    out = attn(z.reshape(-1, shape[3], d))
    return out.view(shape).movedim(3, axis + 1).reshape(b, -1, d)


class JointMixer(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        return self.attn(self.norm(x))

    def flops(self, layout: TokenLayout) -> int:
        return self.attn.flops(1, layout.num_prefix + layout.num_kept)


class SpatialMixer(JointMixer):
    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        b, n, d = x.shape
        frames = layout.grid[0]
        return self.attn(self.norm(x).view(b * frames, n // frames, d)).view(b, n, d)

    def flops(self, layout: TokenLayout) -> int:
        return self.attn.flops(layout.grid[0], layout.frame_tokens)


class DividedMixer(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm_t = nn.LayerNorm(dim, eps=norm_eps)
        self.attn_t = Attention(dim, num_heads, qkv_bias)
        self.norm_s = nn.LayerNorm(dim, eps=norm_eps)
        self.attn_s = Attention(dim, num_heads, qkv_bias)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        p, t, v = layout.num_prefix, layout.grid[0], layout.frame_tokens
        prefix, patches = x[:, :p], x[:, p:]
        b, _, d = patches.shape
        update_t = _attend_along(self.attn_t, self.norm_t(patches), (t, v, 1), axis=0)
        frames = (patches + update_t).reshape(b * t, v, d)
        if p:
            frames = torch.cat([prefix.unsqueeze(1).expand(b, t, p, d).reshape(b * t, p, d), frames], 1)
        update_s = self.attn_s(self.norm_s(frames)).view(b, t, p + v, d)
        update_prefix = update_s[:, :, :p].mean(1)
        return torch.cat([update_prefix, update_t + update_s[:, :, p:].reshape(b, t * v, d)], 1)

    def flops(self, layout: TokenLayout) -> int:
        p, t, v = layout.num_prefix, layout.grid[0], layout.frame_tokens
        return self.attn_t.flops(v, t) + self.attn_s.flops(t, p + v)


class AxialMixer(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for _ in range(3))
        self.attns = nn.ModuleList(Attention(dim, num_heads, qkv_bias) for _ in range(3))

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        update = torch.zeros_like(x)
        for axis, (norm, attn) in enumerate(zip(self.norms, self.attns)):
            update = update + self._attend(axis, attn, norm(x + update), layout)
        return update

    def _attend(self, axis: int, attn: Attention, x: Tensor, layout: TokenLayout) -> Tensor:
        if layout.kept is None:
            return _attend_along(attn, x, layout.grid, axis)
        t, v = layout.grid[0], layout.frame_tokens
        if axis == 0:
            return _attend_along(attn, x, (t, v, 1), axis=0)
        b, n, d = x.shape
        # tube mask: every frame holds the same positions, so frame 0's rows / columns serve all
        line = layout.coords()[:, :v, 3 - axis]  # H attention groups by column, W by row
        mask = same_group_mask(line).repeat_interleave(t, dim=0)
        return attn(x.view(b * t, v, d), attn_mask=mask).view(b, n, d)

    def flops(self, layout: TokenLayout) -> int:
        t, h, w = layout.grid
        if layout.kept is None:
            return sum(a.flops(t * h * w // length, length) for a, length in zip(self.attns, (t, h, w)))
        v = layout.frame_tokens
        return self.attns[0].flops(v, t) + 2 * self.attns[1].flops(t, v)


def fit_window(grid: tuple[int, int, int], window: tuple[int, int, int]) -> tuple[int, int, int]:
    """Per axis, the largest divisor of the grid size that is not above the requested window."""
    return tuple(max(d for d in range(1, min(g, w) + 1) if g % d == 0) for g, w in zip(grid, window))


class SparseMixer(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 window: tuple[int, int, int] = (2, 7, 7)):
        super().__init__()
        self.window = tuple(window)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        q, k, v = self.attn.split_heads(self.norm(x))
        if layout.kept is not None:
            return self.attn.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(layout)))
        g = layout.num_prefix
        win = fit_window(layout.grid, self.window)
        out_global = F.scaled_dot_product_attention(q[:, :, :g], k, v)
        windows = [self._partition(z[:, :, g:], layout.grid, win) for z in (q, k, v)]
        num_windows = windows[0].shape[0] // x.shape[0]
        keys, values = (torch.cat([z[:, :, :g].repeat_interleave(num_windows, 0), zw], 2)
                        for z, zw in ((k, windows[1]), (v, windows[2])))
        out_local = F.scaled_dot_product_attention(windows[0], keys, values)
        out_local = self._unpartition(out_local, layout.grid, win)
        return self.attn.merge_heads(torch.cat([out_global, out_local], 2))

    def _mask(self, layout: TokenLayout) -> Tensor:
        """(B, 1, G + n, G + n): globals see and are seen by all; patches see their own window."""
        g = layout.num_prefix
        t, h, w = layout.grid
        a, b, c = fit_window(layout.grid, self.window)
        coords = layout.coords()
        window_id = (coords[..., 0] // a * (h // b) + coords[..., 1] // b) * (w // c) + coords[..., 2] // c
        local = same_group_mask(window_id)
        return F.pad(local, (g, 0, g, 0), value=True)

    @staticmethod
    def _partition(z: Tensor, grid: tuple[int, int, int], win: tuple[int, int, int]) -> Tensor:
        """(B, heads, t*h*w, hd) -> (B * windows, heads, a*b*c, hd)."""
        bsz, heads, _, hd = z.shape
        (t, h, w), (a, b, c) = grid, win
        z = z.reshape(bsz, heads, t // a, a, h // b, b, w // c, c, hd).permute(0, 2, 4, 6, 1, 3, 5, 7, 8)
        return z.reshape(-1, heads, a * b * c, hd)

    @staticmethod
    def _unpartition(z: Tensor, grid: tuple[int, int, int], win: tuple[int, int, int]) -> Tensor:
        (t, h, w), (a, b, c) = grid, win
        heads, hd = z.shape[1], z.shape[3]
        z = z.view(-1, t // a, h // b, w // c, heads, a, b, c, hd).permute(0, 4, 1, 5, 2, 6, 3, 7, 8)
        return z.reshape(-1, heads, t * h * w, hd)

    def flops(self, layout: TokenLayout) -> int:
        g, n = layout.num_prefix, layout.num_kept
        d = self.attn.proj.in_features
        projections = linear_flops(g + n, d, 4 * d)
        if layout.kept is not None:
            return projections + 4 * (g + n) ** 2 * d
        a, b, c = fit_window(layout.grid, self.window)
        return projections + 4 * n * (a * b * c + g) * d + 4 * g * (n + g) * d


MIXERS: dict[str, type[nn.Module]] = {
    "joint": JointMixer,
    "divided": DividedMixer,
    "axial": AxialMixer,
    "sparse": SparseMixer,
    "spatial": SpatialMixer,
}
