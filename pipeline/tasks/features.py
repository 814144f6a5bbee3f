"""How task code calls a pretrained encoder: clip tokens -> a grid, single frames -> feature maps.

    from pipeline.tasks.features import tokens_to_grid, frame_features, to_model_input
    grid = tokens_to_grid(encoder(video))                 # (B, D, t, h, w)
    x = to_model_input(frames_uint8_THW3)                  # (T, 3, H, W) float, ImageNet-normalised
    maps = frame_features(encoder, x)                      # (T, D, H / sh, W / sw)

Per-frame features from a video encoder (tracking, label propagation): each frame is repeated
`output_stride[0]` times (one token time step, e.g. the 2-frame tubelet of a ViT) and encoded as a
static clip, so every frame gets its own features, computed from that frame alone and aligned
with it in time. The alternative - encoding the video and giving a tubelet's features to each of
its frames - mixes neighbouring frames and blurs fast motion; this choice costs one encoder pass
per frame instead of per tubelet.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.base import BackboneOutput, VideoBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tokens_to_grid(out: BackboneOutput) -> Tensor:
    """(B, N, D) tokens on grid (t, h, w) -> (B, D, t, h, w). Needs every token (no visible-only mask)."""
    batch, tokens, dim = out.tokens.shape
    t, h, w = out.grid
    if tokens != t * h * w:
        raise ValueError(f"tokens_to_grid: {tokens} tokens do not fill the {t}x{h}x{w} grid "
                         f"(encode without a mask to get every token)")
    return out.tokens.transpose(1, 2).reshape(batch, dim, t, h, w)


def to_model_input(frames: np.ndarray | Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float (T, 3, H, W), scaled to [0, 1] then (x - mean) / std."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def resize_to_stride(frames: Tensor, stride: tuple[int, int]) -> Tensor:
    """(T, C, H, W) resized (bilinear, antialiased) to the nearest multiples of the spatial stride."""
    height, width = frames.shape[-2:]
    size = tuple(max(s, round(n / s) * s) for n, s in zip((height, width), stride))
    if size == (height, width):
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


def frame_features(encoder: VideoBackbone, frames: Tensor, batch_size: int = 0) -> Tensor:
    """(B, C, H, W) model-ready frames -> (B, D, H / sh, W / sw) features, each frame encoded alone.

    `batch_size` > 0 encodes that many frames per call (bounds memory on long sequences).
    """
    repeat = encoder.output_stride[0]
    chunks = frames.split(batch_size) if batch_size > 0 else (frames,)
    maps = []
    for chunk in chunks:
        clip = chunk[:, :, None].expand(-1, -1, repeat, -1, -1)
        grid = tokens_to_grid(encoder(clip))
        if grid.shape[2] != 1:
            raise ValueError(f"frame_features: a {repeat}-frame static clip gave {grid.shape[2]} "
                             f"token time steps; expected 1 (output_stride {encoder.output_stride})")
        maps.append(grid[:, :, 0])
    return torch.cat(maps)
