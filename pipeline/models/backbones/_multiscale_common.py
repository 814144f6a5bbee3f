"""What the hierarchical backbones (mvit.py, swin3d.py) share: the patch stem, the mask token,
the stage loop with `return_layers` and gradient checkpointing, FLOP summing, weight init.

    class MViT(MultiscaleBackbone):          # builds its blocks, then self.set_stages(...)
        ...
    out = model(video, mask=mask, return_layers=(0, 3))
    model.flops(16, 224, 224)

A subclass hands `set_stages` one list of blocks per stage. A block is a module called as
`block(tokens, grid) -> (tokens, grid)` with tokens (B, t*h*w, C) on grid (t, h, w), and has
`flops(grid) -> (int, grid)`: its FLOPs for one clip and the grid it outputs. The first block of a
stage may change the grid and width (pooled attention, patch merging), so "stage i's output" is the
token tensor after stage i's last block, at stage i's resolution.

FLOPs here means 2 x multiply-adds of every convolution and matmul of one forward pass on ONE clip,
the convention of torch.utils.flop_counter.FlopCounterMode; norms, activations, softmax,
pooling and additions are not counted. Papers' "GFLOPs" (fvcore) are multiply-adds: half of this.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.base import BackboneOutput, VideoBackbone
from pipeline.models.registry import register_model

Grid = tuple[int, int, int]


def drop_path_rates(num_blocks: int, max_rate: float) -> list[float]:
    """Stochastic depth rising linearly from 0 at the first block to `max_rate` at the last."""
    return [max_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def register_sizes(cls: type[MultiscaleBackbone], sizes: dict[str, dict]) -> None:
    """Register one factory per named size: `create_model(name, **overrides)` builds
    `cls(**size | overrides)` and sets `config` = every constructor argument + name, so that
    `create_model(**model.config)` rebuilds it even if the class defaults change later."""
    defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
    for name, size in sizes.items():
        kwargs = {**defaults, **size}
        # the generic CPU test runs the paper sizes at their real widths with one block per stage,
        # without stochastic depth (a dropped branch on a 2-clip batch gets no gradient at all)
        shrink = {"drop_path_rate": 0.0}
        if not name.endswith("_tiny"):
            shrink["depths"] = tuple(1 for _ in kwargs["depths"])
        register_model(_size_factory(cls, name, kwargs), test_overrides=shrink)


def _size_factory(cls: type[MultiscaleBackbone], name: str, kwargs: dict) -> Callable:
    def factory(**overrides) -> MultiscaleBackbone:
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise TypeError(f"{name}: unknown argument(s) {sorted(unknown)} (valid: {sorted(kwargs)})")
        model = cls(**{**kwargs, **overrides})
        model.config = {"name": name, **kwargs, **overrides}
        return model

    factory.__name__ = factory.__qualname__ = name
    return factory


class MultiscaleBackbone(VideoBackbone):
    """Stem conv -> optional LayerNorm -> mask token -> stages of blocks -> LayerNorm.

    A subclass calls this __init__, builds its blocks and hands them to `set_stages`.

    `embed_dim` is the width of the output tokens (what heads consume); `stem_dim` the width right
    after the patch embedding; `stage_dims[i]` the width of stage i's output.
    """

    mask_mode = "mask_token"

    def __init__(self, *, in_chans: int, stem_dim: int, patch_kernel: Grid, patch_stride: Grid,
                 patch_padding: Grid, stem_norm: bool, num_frames: int, img_size: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.stem_dim = stem_dim
        self.patch_size = tuple(patch_stride)
        self.num_frames = num_frames
        self.img_size = img_size
        self.grad_checkpointing = False
        self.token_grid(num_frames, img_size, img_size)  # the default clip must tile
        self.patch_embed = nn.Conv3d(in_chans, stem_dim, tuple(patch_kernel), tuple(patch_stride),
                                     tuple(patch_padding))
        self.stem_norm = nn.LayerNorm(stem_dim) if stem_norm else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, stem_dim))

    def set_stages(self, stages: list[list[nn.Module]], stage_dims: list[int]) -> None:
        """Install the blocks and the final LayerNorm, then initialise every weight."""
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.stage_dims = tuple(stage_dims)
        self.embed_dim = self.stage_dims[-1]
        self.norm = nn.LayerNorm(self.embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal(0.02) linears and mask token, unit LayerNorms; call after building.
        Position tables initialise themselves where they are created."""
        trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, video: Tensor, mask: Tensor | None = None,
                return_layers: tuple[int, ...] = ()) -> BackboneOutput:
        """`return_layers` are STAGE indices (0-based, negative from the end); `layers[k]` is the
        output of stage `return_layers[k]`, shape (B, t_i*h_i*w_i, stage_dims[i])."""
        if video.ndim != 5 or video.shape[1] != self.in_chans:
            raise ValueError(f"video: expected (B, {self.in_chans}, T, H, W), got {tuple(video.shape)}")
        wanted = [self._stage_index(i) for i in return_layers]
        grid = self.token_grid(*video.shape[2:])
        x = self.stem_norm(self.patch_embed(video).flatten(2).transpose(1, 2))
        if mask is not None:
            x = self._hide(x, mask, grid)
        stage_outputs = {}
        for index, stage in enumerate(self.stages):
            for block in stage:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x, grid = checkpoint(block, x, grid, use_reentrant=False)
                else:
                    x, grid = block(x, grid)
            if index in wanted:
                stage_outputs[index] = x
        x = self.norm(x)
        return BackboneOutput(tokens=x, grid=grid, pooled=x.mean(dim=1), mask=mask,
                              layers=tuple(stage_outputs[i] for i in wanted))

    @property
    def output_stride(self) -> Grid:
        """Pixels (frames, rows, cols) per final token: the stem stride times every downsampling."""
        grid = final = self.token_grid(self.num_frames, self.img_size, self.img_size)
        for stage in self.stages:
            for block in stage:
                _, final = block.flops(final)
        return tuple(p * g // f for p, g, f in zip(self.patch_size, grid, final))

    def flops(self, num_frames: int, height: int, width: int) -> int:
        """FLOPs (2 x multiply-adds, FlopCounterMode's convention) of one forward on one clip."""
        grid = self.token_grid(num_frames, height, width)
        kernel = math.prod(self.patch_embed.kernel_size)
        total = 2 * math.prod(grid) * self.stem_dim * self.in_chans * kernel
        for stage in self.stages:
            for block in stage:
                block_flops, grid = block.flops(grid)
                total += block_flops
        return total

    def _stage_index(self, index: int) -> int:
        n = len(self.stages)
        if not -n <= index < n:
            raise ValueError(f"return_layers: stage index {index} out of range for {n} stages")
        return index % n

    def _hide(self, x: Tensor, mask: Tensor, grid: Grid) -> Tensor:
        """Replace the tokens that `mask` hides (True) by the learned mask token."""
        expected = (x.shape[0], math.prod(grid))
        if mask.dtype != torch.bool or tuple(mask.shape) != expected:
            raise ValueError(f"mask: expected a bool tensor of shape {expected} for token grid {grid}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
