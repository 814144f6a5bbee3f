"""Mask generators over the token grid: tube, random, running-cell and multi-block 3D.

    from pipeline.data.masking import make_masker
    masker = make_masker("tube", ratio=0.9, grid=(8, 14, 14))
    mask = masker(batch_size, torch.Generator().manual_seed(0))   # (B, 1568) bool, True = hidden

The grid is (t, h, w) = (T/pt, H/ph, W/pw); token n is (n // (h*w), (n // w) % h, n % w), as in
pipeline/models/base.py. Every generator is a pure function of its arguments and the generator.
Hidden counts are equal across rows, which visible-only encoders need:

    tube          round(ratio*h*w) spatial positions, hidden in every time step (VideoMAE)
    random        round(ratio*t*h*w) tokens anywhere
    running_cell  round(4*ratio) of each 2x2 cell, the hidden slots rotating by one per time step
                  (VideoMAE v2 decoder masking); needs even h and w
    multiblock    round(ratio*h*w) spatial positions covered by random rectangles that span all
                  time steps (V-JEPA 3D multi-block); the last rectangle is cut in raster order so
                  the count is exact, which keeps the mask a tube mask
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, get_args

import torch
from torch import Tensor

from pipeline.config import MaskType

Grid = tuple[int, int, int]
Masker = Callable[[int, torch.Generator], Tensor]

# 2x2 cell slots in clockwise order, so a rotation of the hidden set moves around the cell
_CELL_ORDER = ((0, 0), (0, 1), (1, 1), (1, 0))


class Block(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def _hide_lowest(noise: Tensor, num_hidden: int) -> Tensor:
    """Boolean mask hiding, per row, the `num_hidden` positions with the lowest noise."""
    ids = noise.argsort(dim=1)[:, :num_hidden]
    return torch.zeros_like(noise, dtype=torch.bool).scatter_(1, ids, True)


def random_mask(batch: int, grid: Grid, ratio: float, generator: torch.Generator) -> Tensor:
    t, h, w = grid
    noise = torch.rand(batch, t * h * w, generator=generator)
    return _hide_lowest(noise, round(ratio * t * h * w))


def tube_mask(batch: int, grid: Grid, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, N) bool: round(ratio * h * w) random spatial positions hidden in every frame."""
    t, h, w = grid
    spatial = _hide_lowest(torch.rand(batch, h * w, generator=generator), round(ratio * h * w))
    return spatial.repeat(1, t)


def running_cell_mask(batch: int, grid: Grid, ratio: float, generator: torch.Generator) -> Tensor:
    return running_cell_from_phase(torch.randint(0, 4, (batch,), generator=generator), grid, ratio)


def running_cell_from_phase(phase: Tensor, grid: Grid, ratio: float) -> Tensor:
    """(B,) phases 0..3 -> (B, t*h*w) running-cell mask, computed on `phase`'s device."""
    t, h, w = grid
    hidden_per_cell = round(4 * ratio)
    if h % 2 or w % 2:
        raise ValueError(f"running_cell mask: grid {h}x{w} must have even height and width")
    if not 0 < hidden_per_cell < 4:
        raise ValueError(f"running_cell mask: ratio {ratio} must hide 1 to 3 of each 2x2 cell")
    dy = (torch.arange(h, device=phase.device) % 2)[:, None]
    dx = (torch.arange(w, device=phase.device) % 2)[None, :]
    slot_map = (3 * dy + dx - 2 * dy * dx).flatten()  # each position's index in _CELL_ORDER
    time = torch.arange(t, device=phase.device).view(1, t, 1)
    hidden = (slot_map.view(1, 1, -1) - time - phase.view(-1, 1, 1)) % 4 < hidden_per_cell
    return hidden.reshape(len(phase), t * h * w)


def sample_blocks(height: int, width: int, num_hidden: int, scale: tuple[float, float],
                  aspect: tuple[float, float], generator: torch.Generator) -> list[Block]:
    """Random rectangles on an (height, width) grid whose union covers at least num_hidden cells."""
    covered = torch.zeros(height, width, dtype=torch.bool)
    blocks: list[Block] = []
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    max_blocks = 100 * height * width
    while int(covered.sum()) < num_hidden:
        if len(blocks) >= max_blocks:
            raise RuntimeError(f"multiblock mask: cannot cover {num_hidden} of {height}x{width} cells")
        u = torch.rand(4, generator=generator).tolist()
        area = (scale[0] + (scale[1] - scale[0]) * u[0]) * height * width
        ar = math.exp(log_lo + (log_hi - log_lo) * u[1])
        bh = min(height, max(1, round(math.sqrt(area / ar))))
        bw = min(width, max(1, round(math.sqrt(area * ar))))
        top = int(u[2] * (height - bh + 1))
        left = int(u[3] * (width - bw + 1))
        blocks.append(Block(top, left, bh, bw))
        covered[top:top + bh, left:left + bw] = True
    return blocks


def blocks_to_mask(height: int, width: int, blocks: list[Block], num_hidden: int) -> Tensor:
    """(height*width,) hidden map: all blocks but the last in full, then the last one's new cells
    in raster order until exactly num_hidden cells are hidden."""
    hidden = torch.zeros(height, width, dtype=torch.bool)
    for b in blocks[:-1]:
        hidden[b.top:b.top + b.height, b.left:b.left + b.width] = True
    if blocks:
        last = blocks[-1]
        region = torch.zeros_like(hidden)
        region[last.top:last.top + last.height, last.left:last.left + last.width] = True
        new = (region & ~hidden).flatten().nonzero().flatten()
        hidden.view(-1)[new[:num_hidden - int(hidden.sum())]] = True
    return hidden.flatten()


def multiblock_mask(batch: int, grid: Grid, ratio: float, generator: torch.Generator,
                    scale: tuple[float, float] = (0.15, 0.2),
                    aspect: tuple[float, float] = (0.75, 1.5)) -> Tensor:
    t, h, w = grid
    num_hidden = round(ratio * h * w)
    rows = [blocks_to_mask(h, w, sample_blocks(h, w, num_hidden, scale, aspect, generator), num_hidden)
            for _ in range(batch)]
    return torch.stack(rows).repeat(1, t)


def no_mask(batch: int, grid: Grid) -> Tensor:
    t, h, w = grid
    return torch.zeros(batch, t * h * w, dtype=torch.bool)


def make_masker(mask_type: MaskType, ratio: float, grid: Grid,
                block_scale: tuple[float, float] = (0.15, 0.2),
                block_aspect: tuple[float, float] = (0.75, 1.5)) -> Masker:
    """The generator named by `mask_type` bound to a ratio and grid: masker(batch, generator)."""
    if mask_type == "tube":
        return lambda batch, gen: tube_mask(batch, grid, ratio, gen)
    if mask_type == "random":
        return lambda batch, gen: random_mask(batch, grid, ratio, gen)
    if mask_type == "running_cell":
        running_cell_mask(1, grid, ratio, torch.Generator())  # fail at build time on a bad grid/ratio
        return lambda batch, gen: running_cell_mask(batch, grid, ratio, gen)
    if mask_type == "multiblock":
        return lambda batch, gen: multiblock_mask(batch, grid, ratio, gen, block_scale, block_aspect)
    if mask_type == "none":
        return lambda batch, gen: no_mask(batch, grid)
    raise ValueError(f"unknown mask type {mask_type!r} (known: {', '.join(get_args(MaskType))})")
