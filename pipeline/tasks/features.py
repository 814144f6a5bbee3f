"""How task code calls a pretrained encoder: clip tokens -> a grid, single frames -> feature maps.

    from pipeline.tasks.features import tokens_to_grid, frame_features, sequence_features, to_model_input
    grid = tokens_to_grid(encoder(video))                 # (B, D, t, h, w)
    x = to_model_input(frames_uint8_THW3)                  # (T, 3, H, W) float, ImageNet-normalised
    maps = frame_features(encoder, x)                      # (T, D, H / sh, W / sw), frames unrelated
    maps = sequence_features(encoder, x)                   # the same, x consecutive frames of one video

Per-frame features from a video encoder (tracking, label propagation): each frame is repeated
`output_stride[0]` times (one token time step, e.g. the 2-frame tubelet of a ViT) and encoded as a
static clip, so every frame gets its own features, computed from that frame alone and aligned
with it in time. The alternative - encoding the video and giving a tubelet's features to each of
its frames - mixes neighbouring frames and blurs fast motion; this choice costs one encoder pass
per frame instead of per tubelet.

A motion-input encoder (`motion_input`, e.g. a ViT with input_transform=frame_diff) sees only the
changes between frames, so a still clip gives it nothing. `sequence_features` gives each frame of
a video the features of the tubelet that holds it in a window of the encoder's `num_frames`
consecutive frames, the frame last in the window where the video allows (so its features see the
motion up to it and none after it); `frame_features` refuses such an encoder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from pipeline.models.base import BackboneOutput, VideoBackbone

def tokens_to_grid(out: BackboneOutput) -> Tensor:
    """(B, N, D) tokens on grid (t, h, w) -> (B, D, t, h, w). Needs every token (no visible-only mask)."""
    batch, tokens, dim = out.tokens.shape
    t, h, w = out.grid
    if tokens != t * h * w:
        raise ValueError(f"tokens_to_grid: {tokens} tokens do not fill the {t}x{h}x{w} grid "
                         f"(encode without a mask to get every token)")
    return out.tokens.transpose(1, 2).reshape(batch, dim, t, h, w)


def to_model_input(frames: np.ndarray | Tensor, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                   std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> Tensor:
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
    if encoder.motion_input:
        raise ValueError(f"frame_features: {type(encoder).__name__} sees only changes between frames "
                         "(motion_input), so a single frame gives it nothing; use sequence_features on "
                         "consecutive frames, or an encoder without input_transform=frame_diff")
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


def sequence_features(encoder: VideoBackbone, frames: Tensor, batch_size: int = 0) -> Tensor:
    """(T, C, H, W) consecutive model-ready frames of one video -> (T, D, H / sh, W / sw).

    Appearance encoders: `frame_features`. Motion-input encoders: frame f gets the tubelet holding
    it in the window of `num_frames` frames that ends at f (the first window for the first frames);
    a video shorter than the window is encoded whole, its last frame repeated up to a whole
    tubelet. `batch_size` > 0 bounds the frames per encoder call.
    """
    if not encoder.motion_input:
        return frame_features(encoder, frames, batch_size)
    count, step = frames.shape[0], encoder.output_stride[0]
    if count < 2:
        raise ValueError(f"sequence_features: a motion-input encoder needs at least 2 frames, got {count}")
    window = max(step, encoder.num_frames // step * step)
    if count < window:
        window = -(-count // step) * step
        frames = torch.cat([frames, frames[-1:].expand(window - count, -1, -1, -1)])
    starts = [min(max(f - window + 1, 0), len(frames) - window) for f in range(count)]
    unique = sorted(set(starts))
    clips = torch.stack([frames[s:s + window] for s in unique]).transpose(1, 2)  # (n, C, window, H, W)
    per_call = max(1, batch_size // window) if batch_size > 0 else len(clips)
    grids = torch.cat([tokens_to_grid(encoder(chunk)) for chunk in clips.split(per_call)])
    where = {s: i for i, s in enumerate(unique)}
    return torch.stack([grids[where[s], :, (f - s) // step] for f, s in enumerate(starts)])
