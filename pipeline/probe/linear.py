"""The linear probe: an affine-free BatchNorm, then a Linear classifier (MAE's protocol), as a
batched grid (pipeline/probe/grid.py).

    forward, params = linear_grid(train_views (M, D), num_classes, members=G)

The BatchNorm standardises each channel with the training views' mean and variance (what an
affine-free BatchNorm converges to): pooled features share most of their value, and a linear
layer on them directly learns slowly and unevenly across learning rates. Weights start at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.probe.grid import Forward


def linear_grid(train_views: Tensor, num_classes: int, members: int) -> tuple[Forward, dict[str, Tensor]]:
    mean = train_views.float().mean(dim=0)
    std = train_views.float().var(dim=0, unbiased=False).add(1e-5).sqrt()
    dim = train_views.shape[-1]
    params = {"weight": torch.zeros(members, dim, num_classes), "bias": torch.zeros(members, num_classes)}

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.einsum("bd,gdc->gbc", (x - mean) / std, p["weight"]) + p["bias"][:, None]

    return forward, params
